"""The distillation flow: sample -> label -> build -> train -> evaluate -> register.

    python -m flows.distill --profile demo storage.endpoint_url=http://127.0.0.1:9000

Runs against whatever S3 and teacher the config names; `flows/demo.py` starts local ones.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC
from pathlib import Path
from typing import Any

from stillroom.env import apply_offline_env, state_dir

apply_offline_env()  # before prefect/mlflow import: they read these settings on import

from prefect import flow  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.deployments import run_deployment  # noqa: E402
from prefect.flow_runs import pause_flow_run  # noqa: E402
from prefect.input import RunInput  # noqa: E402

from flows.train import TrainParams, train  # noqa: E402
from stillroom.config import PipelineConfig, load_config, profile_parser  # noqa: E402
from stillroom.registry import ui_links  # noqa: E402
from stillroom.report import format_markdown  # noqa: E402
from stillroom.storage import get_json, make_s3_client, parse_s3_uri, s3_uri  # noqa: E402
from tasks.data import build_task, label_task, run_key, sample_task  # noqa: E402
from tasks.model import (  # noqa: E402
    evaluate_task,
    fetch_champion_task,
    fetch_trained_task,
    prepare_base_task,
)
from tasks.registry import register_task, review_task  # noqa: E402
from tasks.report import report_task  # noqa: E402


def flow_run_key() -> str:
    """This flow run's id for paths and cache keys: the same on every retry of the run, so
    a retried run finds its own persisted stages; sortable by when it was scheduled."""
    from prefect.runtime import flow_run

    scheduled = flow_run.scheduled_start_time
    return f"{scheduled.astimezone(UTC):%Y%m%dT%H%M%SZ}-{str(flow_run.id)[:8]}"


class ReviewDecision(RunInput):
    """The form the Prefect UI shows a reviewer when `registry.review` is manual."""

    approve: bool = False
    comment: str = ""
    reviewer: str = "prefect-ui"


def await_review(cfg: PipelineConfig, registration: Any, report_markdown: str) -> str:
    """Pause until someone approves or rejects in the Prefect UI; the report is one click
    away as the run's `evaluation-report` artifact."""
    decision = pause_flow_run(
        wait_for_input=ReviewDecision.with_initial_data(
            description=f"Promote {registration.name} v{registration.version}?\n\n"
            + report_markdown
        ),
        timeout=cfg.registry.review_timeout_s,
    )
    review_task(cfg, registration, decision.approve, decision.comment, decision.reviewer)
    return "approved" if decision.approve else "rejected"


def load_test_rows(dataset_dir: Path) -> list[dict[str, str]]:
    from datasets import load_from_disk

    return load_from_disk(str(dataset_dir))["test"].to_list()


def train_stage(
    cfg: PipelineConfig, profile: str, overrides: list[str], run_id: str, dataset_uri: str
) -> dict[str, Any]:
    """The train flow, here as a subflow or on its own pool through its deployment.

    Only URIs cross over; the deployed run's metrics are read back from S3, where the
    train task wrote them, so no result storage has to be shared between the two.
    """
    output_uri = s3_uri(cfg.storage.bucket, run_key(cfg, run_id, "training"))
    params = TrainParams(
        run_id=run_id,
        dataset_uri=dataset_uri,
        output_uri=output_uri,
        profile=profile,
        overrides=overrides,
    )
    if cfg.training.deployment is None:
        return train(params)
    run = run_deployment(
        cfg.training.deployment, parameters={"params": params.model_dump()}, timeout=None
    )
    if not run.state or not run.state.is_completed():
        raise RuntimeError(f"training run {run.name} ended {run.state and run.state.name}")
    return get_json(make_s3_client(cfg.storage), *parse_s3_uri(f"{output_uri}/metrics.json"))


@flow(name="distill")
def distill(
    profile: str = "demo", overrides: list[str] | None = None, run_id: str | None = None
) -> dict[str, Any]:
    """`run_id` continues an earlier run: its sample, labels and dataset are reused."""
    cfg: PipelineConfig = load_config(profile, overrides)
    run_id = run_id or flow_run_key()
    run_dir = state_dir() / "runs" / run_id
    dataset_dir = run_dir / "dataset"
    manifest = sample_task(cfg, run_id)
    labels = label_task(cfg, run_id, manifest)
    dataset = build_task(cfg, run_id, labels, dataset_dir)
    base_dir = prepare_base_task(cfg, state_dir() / "models", dataset_dir)
    trained = train_stage(cfg, profile, overrides or [], run_id, dataset["uri"])
    training = fetch_trained_task(cfg, trained, run_dir / "training")
    base = (
        evaluate_task(cfg, base_dir, dataset_dir, "base", measure_requests=False)
        if cfg.evaluation.evaluate_base
        else None
    )
    student = evaluate_task(cfg, Path(training["merged_dir"]), dataset_dir, "student")
    # Fetched before registering: registration may make this candidate the champion.
    found = (
        fetch_champion_task(cfg, run_dir / "champion") if cfg.evaluation.evaluate_champion else None
    )
    champion = evaluate_task(cfg, found[1], dataset_dir, f"champion-v{found[0]}") if found else None
    counts = {"sampling": manifest.counts(), "labelling": labels.counts()}
    registration = register_task(
        cfg, run_id, counts, dataset, training, student, base, champion=champion
    )
    report = report_task(
        cfg,
        run_id,
        {
            "baseline": base,
            "candidate": student,
            f"champion v{found[0]}" if found else "champion": champion,
        },
        labels.labelled,
        counts["labelling"]["cost_per_1k_documents_usd"],
        load_test_rows(dataset_dir),
        registration,
        run_dir / "report",
    )
    if registration.review == "pending":
        outcome = await_review(cfg, registration, report["markdown"])
        registration = dataclasses.replace(
            registration,
            decision=f"{outcome} in review ({registration.decision})",
            promoted=outcome == "approved",
            aliases=sorted(
                set(registration.aliases) | ({"champion"} if outcome == "approved" else set())
            ),
        )
    summary = {
        "run_id": run_id,
        "profile": cfg.profile,
        **counts,
        "dataset": dataset,
        "training": {k: v for k, v in training.items() if k != "log_history"},
        "student": student.metrics,
        "base": base.metrics if base else None,
        "champion": ({"version": found[0]} | champion.metrics) if found and champion else None,
        "comparison": report["table"],
        "cost_ratio": report["cost_ratio"],
        "registration": dataclasses.asdict(registration),
        "links": ui_links(cfg.registry, registration),
    }
    create_markdown_artifact(
        key="distill-summary",
        markdown=format_markdown(summary),
        description=f"distillation run {run_id}",
    )
    return summary


def main() -> None:
    args = profile_parser("Run the distillation flow.").parse_args()
    print(json.dumps(distill(args.profile, args.overrides), indent=2, default=str))


if __name__ == "__main__":
    main()
