"""Labelling throughput against the local teacher with provider-like latency.

    .venv/bin/python benchmarks/labelling.py [--latency-ms 200] [--docs 300]

Starts a moto S3 server and the replay teacher (with added latency) on 127.0.0.1, seeds
the BFCL demo documents, then labels the same sample once per setting: with a client
rate limit that binds (the target: >= 95% of the limit sustained), and without one, where
latency x concurrency is the ceiling. Each setting uses its own teacher model name, so
none of them is helped by another's cache. Prints docs/s, the ratio to whichever limit
binds, and what the server saw (429s it had to send, answers delivered twice).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import urllib.request
from pathlib import Path

from stillroom.env import apply_offline_env

apply_offline_env()

from stillroom import services  # noqa: E402
from stillroom.config import load_config  # noqa: E402
from stillroom.sampling import sample_documents  # noqa: E402
from stillroom.seeding import seed_bfcl  # noqa: E402
from stillroom.storage import make_s3_client  # noqa: E402
from stillroom.targets import load_target  # noqa: E402
from stillroom.teacher import label_manifest  # noqa: E402

# (concurrency, requests/minute): the limit binds in the first three, latency in the last
# two. The 40/s row is past what one 2-core machine running moto, the teacher server and
# the client together can serve; it shows that ceiling rather than the limiter's.
SETTINGS = [(16, 600), (16, 1200), (16, 1500), (32, 2400), (4, None), (8, None)]


def server_stats(url: str) -> dict[str, int]:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats") as response:
        return json.loads(response.read())


def reset_stats(url: str) -> None:
    request = urllib.request.Request(url.removesuffix("/v1") + "/admin/reset", method="POST")
    urllib.request.urlopen(request).close()


def run_setting(cfg, s3, manifest, target, teacher_url, concurrency, rpm, latency_s, index):
    teacher = cfg.teacher.model_copy(
        update={
            "base_url": teacher_url,
            "model": f"bench-{index}",  # a cache of its own: every answer is paid for
            "concurrency": concurrency,
            "requests_per_minute": rpm,
            "progress_every_s": 3600,
        }
    )
    reset_stats(teacher_url)
    started, cpu_started = time.perf_counter(), time.process_time()
    result = label_manifest(s3, manifest, target, teacher)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    stats = server_stats(teacher_url)
    rate = len(manifest.items) / elapsed
    bound = rpm / 60 if rpm else concurrency / latency_s
    seen = (stats["requests"] - 1) / (stats["last_at"] - stats["first_at"])
    sustained = f"{seen / (rpm / 60):.3f}" if rpm else "-"
    return {
        "concurrency": concurrency,
        "limit/s": f"{rpm / 60:.1f}" if rpm else "none",
        "docs/s": f"{rate:.2f}",
        "binding": "rate limit" if rpm and rpm / 60 < concurrency / latency_s else "latency",
        "ratio": f"{rate / bound:.3f}",
        "server saw req/s": f"{seen:.2f}",
        "sustained/limit": sustained,
        "paid": result.teacher_calls,
        "429s": stats.get("rate_limited", 0),
        "repeats": stats.get("repeats", 0),
        "seconds": f"{elapsed:.1f}",
        "client CPU ms/doc": f"{cpu / len(manifest.items) * 1000:.1f}",
    }


def print_table(rows: list[dict]) -> None:
    headers = list(rows[0])
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in headers]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row[h]).ljust(w) for h, w in zip(headers, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--docs", type=int, default=300)
    args = parser.parse_args()
    services.ensure_local_aws_credentials()
    target = load_target("configs/targets/bfcl_tool_call.yaml")
    with (
        tempfile.TemporaryDirectory() as tmp,
        services.running(services.start_moto(Path(tmp))) as s3_server,
    ):
        cfg = load_config(None, [f"storage.endpoint_url={s3_server.url}", "seed.bad_documents=0"])
        s3 = make_s3_client(cfg.storage)
        replay = Path(tmp) / "replay.jsonl"
        seed_bfcl(s3, cfg.storage.bucket, cfg.seed, replay, target.pii)
        sampling = cfg.sampling.model_copy(update={"size": args.docs})
        manifest = sample_documents(s3, cfg.storage.bucket, sampling, target)
        faults = [f"latency_ms={args.latency_ms}"]
        with services.running(services.start_teacher(replay, Path(tmp), faults=faults)) as t:
            print(f"{len(manifest.items)} documents, teacher latency {args.latency_ms:.0f} ms\n")
            rows = [
                run_setting(cfg, s3, manifest, target, t.url, conc, rpm, args.latency_ms / 1000, i)
                for i, (conc, rpm) in enumerate(SETTINGS)
            ]
    print_table(rows)
    print(
        "\nratio: docs/s end to end over the binding limit (requests/s allowed, or"
        " concurrency/latency). server saw req/s: arrivals over their span, at the teacher."
        "\nEnd to end includes the run's start and its tail (the last answers' latency and"
        " caching), so it sits a little under the server's figure; the target (>= 0.95 of the"
        " limit sustained) is the server's."
        "\nclient CPU ms/doc: this process's CPU time per document (reading, scrubbing, the"
        " API call, validation, the S3 cache), i.e. what remains when S3 and the teacher are"
        " real services on other machines."
    )


if __name__ == "__main__":
    main()
