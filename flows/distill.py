"""The distillation flow: sample -> label -> build -> train -> evaluate -> register.

    python -m flows.distill --profile demo storage.endpoint_url=http://127.0.0.1:9000

Runs against whatever S3 and teacher the config names; `flows/demo.py` starts local ones.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from pathlib import Path
from typing import Any

from stillroom.env import apply_offline_env, state_dir

apply_offline_env()  # before prefect/mlflow import: they read these settings on import

from prefect import flow  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402

from stillroom.config import PipelineConfig, load_config, profile_parser  # noqa: E402
from stillroom.report import format_markdown  # noqa: E402
from tasks.data import build_task, label_task, sample_task  # noqa: E402
from tasks.model import evaluate_task, prepare_base_task, train_task  # noqa: E402
from tasks.registry import register_task  # noqa: E402


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def tokenizer_corpus(labelled: list[dict[str, Any]]) -> list[str]:
    """Text a locally trained tokenizer (the `tiny` test model) learns its merges from."""
    return [
        json.dumps(r["messages"]) + json.dumps(r["tools"]) + json.dumps(r["output"])
        for r in labelled
    ]


@flow(name="distill")
def distill(profile: str = "demo", overrides: list[str] | None = None) -> dict[str, Any]:
    cfg: PipelineConfig = load_config(profile, overrides)
    run_id = new_run_id()
    run_dir = state_dir() / "runs" / run_id
    manifest = sample_task(cfg, run_id)
    labels = label_task(cfg, run_id, manifest)
    dataset = build_task(cfg, run_id, labels, run_dir / "dataset")
    base_dir = prepare_base_task(cfg, state_dir() / "models", tokenizer_corpus(labels.labelled))
    training = train_task(cfg, run_dir / "dataset", base_dir, run_dir / "training")
    base = (
        evaluate_task(cfg, base_dir, run_dir / "dataset", "base")
        if cfg.evaluation.evaluate_base
        else None
    )
    student = evaluate_task(cfg, Path(training["merged_dir"]), run_dir / "dataset", "student")
    counts = {"sampling": manifest.counts(), "labelling": labels.counts()}
    registration = register_task(cfg, run_id, counts, dataset, training, student, base)
    summary = {
        "run_id": run_id,
        "profile": cfg.profile,
        **counts,
        "dataset": dataset,
        "training": {k: v for k, v in training.items() if k != "loss_curve"},
        "student": student.metrics,
        "base": base.metrics if base else None,
        "registration": dataclasses.asdict(registration),
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
