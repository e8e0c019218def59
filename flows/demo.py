"""The offline demo: local S3 + replay teacher, BFCL documents, then the distill flow.

    make demo          # or: python -m flows.demo --profile demo [dotted overrides]

Starts a moto S3 server and the replay teacher on 127.0.0.1, seeds the bucket with BFCL
cases laid out as logged requests, runs `distill`, prints the summary, stops both servers.
"""

from __future__ import annotations

import time
from typing import Any

from stillroom.env import apply_offline_env, state_dir

apply_offline_env()

from stillroom import services  # noqa: E402
from stillroom.config import load_config, profile_parser  # noqa: E402
from stillroom.params import DistillParams  # noqa: E402
from stillroom.registry import tracking_uri  # noqa: E402
from stillroom.report import format_summary  # noqa: E402
from stillroom.seeding import seed_bfcl  # noqa: E402
from stillroom.storage import make_s3_client  # noqa: E402
from stillroom.targets import load_target  # noqa: E402


def run_demo(profile: str, overrides: list[str]) -> dict[str, Any]:
    from flows.distill import distill

    home = state_dir()
    services.ensure_local_aws_credentials()
    replay = home / "teacher" / "replay.jsonl"
    with services.running(services.start_moto(home / "logs")) as s3_server:
        cfg = load_config(profile, [*overrides, f"storage.endpoint_url={s3_server.url}"])
        pii = load_target(cfg.target).pii
        s3 = make_s3_client(cfg.storage)
        seeded = seed_bfcl(s3, cfg.storage.bucket, cfg.seed, replay, pii)
        print(
            f"seeded {seeded['documents']} documents (+{seeded['bad_documents']} malformed) "
            f"into s3://{cfg.storage.bucket}/requests/ at {s3_server.url}"
        )
        faults = cfg.seed.teacher_faults
        if faults:
            print(f"local teacher injects faults: {', '.join(faults)}")
        teacher_service = services.start_teacher(replay, home / "logs", faults=faults)
        with services.running(teacher_service) as teacher:
            local = [f"storage.endpoint_url={s3_server.url}", f"teacher.base_url={teacher.url}"]
            summary = distill(DistillParams(profile=profile, overrides=[*overrides, *local]))
    summary["seeded"] = seeded
    return summary


def main() -> None:
    args = profile_parser("Run the offline distillation demo.").parse_args()
    started = time.perf_counter()
    summary = run_demo(args.profile, args.overrides)
    print(format_summary(summary))
    print(
        f"  documents seeded: {summary['seeded']['documents']} "
        f"(+{summary['seeded']['bad_documents']} malformed)"
    )
    print(f"  wall time: {time.perf_counter() - started:.0f} s")
    store = tracking_uri(load_config(args.profile).registry)
    print(f"  MLflow UI:  make serve  -> http://127.0.0.1:5000  (store {store})")
    print("  Prefect UI: make serve  -> http://127.0.0.1:4200  (flow run 'distill')")


if __name__ == "__main__":
    main()
