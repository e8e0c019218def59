"""The model half of distill as a flow of its own: evaluate, register, gate, report.

    python -m flows.evaluate_and_promote --run-id 20261204T020000Z-1a2b3c4d --profile demo

Given a run id it reads that run's dataset, labels and trained model from runs/<run_id>/
in S3; `distill` calls `evaluate_stage` with the same inputs straight from memory.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stillroom.env import apply_offline_env, state_dir

apply_offline_env()  # before prefect/mlflow import: they read these settings on import

from prefect import flow, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.flow_runs import pause_flow_run  # noqa: E402
from prefect.input import RunInput  # noqa: E402

from flows.common import run_dir  # noqa: E402
from stillroom.config import PipelineConfig, profile_parser  # noqa: E402
from stillroom.params import EvaluateParams  # noqa: E402
from stillroom.registry import ui_links  # noqa: E402
from stillroom.report import format_markdown  # noqa: E402
from stillroom.sampling import read_manifest  # noqa: E402
from stillroom.splits import dataset_hash, split_sizes  # noqa: E402
from stillroom.storage import (  # noqa: E402
    download_dir,
    get_json_if_exists,
    make_s3_client,
    parse_s3_uri,
    read_jsonl,
    s3_uri,
)
from tasks.data import run_key  # noqa: E402
from tasks.model import (  # noqa: E402
    evaluate_task,
    fetch_champion_task,
    fetch_trained_task,
    prepare_base_task,
)
from tasks.registry import register_task, review_task  # noqa: E402
from tasks.report import report_task  # noqa: E402


@dataclass
class RunInputs:
    """What evaluation needs of the earlier stages; URIs only, apart from the local dataset."""

    counts: dict[str, Any]  # sampling and labelling counts
    dataset: dict[str, Any]  # uri, hash, sizes
    dataset_dir: Path
    training: dict[str, Any]  # the trainer's metrics with adapter_uri / merged_uri
    labelled: list[dict[str, Any]]  # labelling records: the teacher's latency per answer


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


def reviewed(registration: Any, outcome: str) -> Any:
    return dataclasses.replace(
        registration,
        decision=f"{outcome} in review ({registration.decision})",
        promoted=outcome == "approved",
        aliases=sorted(
            set(registration.aliases) | ({"champion"} if outcome == "approved" else set())
        ),
    )


def evaluate_stage(cfg: PipelineConfig, run_id: str, inputs: RunInputs) -> dict[str, Any]:
    """Base, candidate and champion on the run's test split; register; gate; report."""
    here = run_dir(run_id)
    training = fetch_trained_task(cfg, inputs.training, here / "training")
    base = None
    if cfg.evaluation.evaluate_base:
        base_dir = prepare_base_task(cfg, state_dir() / "models", inputs.dataset_dir)
        base = evaluate_task(cfg, base_dir, inputs.dataset_dir, "base", measure_requests=False)
    student = evaluate_task(cfg, Path(training["merged_dir"]), inputs.dataset_dir, "student")
    # Fetched before registering: registration may make this candidate the champion.
    found = (
        fetch_champion_task(cfg, here / "champion") if cfg.evaluation.evaluate_champion else None
    )
    champion = (
        evaluate_task(cfg, found[1], inputs.dataset_dir, f"champion-v{found[0]}") if found else None
    )
    registration = register_task(
        cfg, run_id, inputs.counts, inputs.dataset, training, student, base, champion=champion
    )
    report = report_task(
        cfg,
        run_id,
        {
            "baseline": base,
            "candidate": student,
            f"champion v{found[0]}" if found else "champion": champion,
        },
        inputs.labelled,
        inputs.counts["labelling"]["cost_per_1k_documents_usd"],
        load_test_rows(inputs.dataset_dir),
        registration,
        here / "report",
    )
    if registration.review == "pending":
        registration = reviewed(registration, await_review(cfg, registration, report["markdown"]))
    summary = {
        "run_id": run_id,
        "profile": cfg.profile,
        **inputs.counts,
        "dataset": {k: v for k, v in inputs.dataset.items() if k != "path"},
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


def required(value: Any, what: str, uri: str, stage: str) -> Any:
    if value is None:
        raise FileNotFoundError(f"no {what} at {uri}: run the {stage} stage for this run first")
    return value


@task(name="load-run", cache_policy=NO_CACHE)
def load_run_task(
    cfg: PipelineConfig, run_id: str, training_uri: str | None, dataset_dir: Path
) -> RunInputs:
    """A finished run's stage outputs from S3, with a clear error naming what is missing."""
    from datasets import load_from_disk

    s3, bucket = make_s3_client(cfg.storage), cfg.storage.bucket

    def key(name: str) -> str:
        return run_key(cfg, run_id, name)

    counts_key = key("labels/label-counts.json")
    label_counts = required(
        get_json_if_exists(s3, bucket, counts_key), "labels", s3_uri(bucket, counts_key), "label"
    )
    metrics_uri = f"{training_uri or s3_uri(bucket, key('training'))}/metrics.json"
    training = required(
        get_json_if_exists(s3, *parse_s3_uri(metrics_uri)), "trained model", metrics_uri, "train"
    )
    dataset_uri = s3_uri(bucket, key("dataset"))
    if not (dataset_dir / "dataset_dict.json").is_file():
        download_dir(s3, dataset_uri, dataset_dir)
    dataset = load_from_disk(str(dataset_dir))
    return RunInputs(
        counts={
            "sampling": read_manifest(s3, bucket, key("manifest.json")).counts(),
            "labelling": label_counts,
        },
        dataset={"uri": dataset_uri, "hash": dataset_hash(dataset), "sizes": split_sizes(dataset)},
        dataset_dir=dataset_dir,
        training=training,
        labelled=read_jsonl(s3, bucket, key("labels/labelled.jsonl")),
    )


@flow(name="evaluate-and-promote")
def evaluate_and_promote(params: EvaluateParams) -> dict[str, Any]:
    cfg = params.load()
    dataset_dir = run_dir(params.run_id) / "dataset"
    inputs = load_run_task(cfg, params.run_id, params.training_uri, dataset_dir)
    return evaluate_stage(cfg, params.run_id, inputs)


def main() -> None:
    parser = profile_parser("Evaluate, register and gate one run's trained student.")
    parser.add_argument("--run-id", required=True, help="a run whose training finished")
    parser.add_argument("--training-uri", help="where training wrote, if not the run's folder")
    args = parser.parse_args()
    params = EvaluateParams(
        run_id=args.run_id,
        training_uri=args.training_uri,
        profile=args.profile,
        overrides=args.overrides,
    )
    print(json.dumps(evaluate_and_promote(params), indent=2, default=str))


if __name__ == "__main__":
    main()
