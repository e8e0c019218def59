"""Task that records a run in MLflow and moves the registry aliases."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from stillroom.config import PipelineConfig
from stillroom.evaluation import EvalReport
from stillroom.registry import (
    Candidate,
    Lineage,
    Registration,
    code_version,
    config_hash,
    configure,
    log_student_model,
    register_candidate,
)
from stillroom.targets import load_target


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else key, sub))
        return out
    return {prefix: value}


def numeric(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    return {
        f"{prefix}{k}": float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


# Trainer log keys -> MLflow metric names, logged per optimizer step.
HISTORY_METRICS = {
    "loss": "train.step_loss",
    "eval_loss": "train.val_loss",
    "learning_rate": "train.learning_rate",
    "grad_norm": "train.grad_norm",
    "tokens_per_second": "train.step_tokens_per_second",
    "peak_memory_mib": "train.step_peak_memory_mib",
}


def log_training_history(training: dict[str, Any], adapter_dir: Path) -> None:
    """Per-step curves, the loss plot and the adapter, in the run that registers the model."""
    from stillroom.eval_report import plot_training

    for entry in training["log_history"]:
        for key, name in HISTORY_METRICS.items():
            if isinstance(entry.get(key), int | float):
                mlflow.log_metric(name, float(entry[key]), step=int(entry["step"]))
    with tempfile.TemporaryDirectory() as tmp:
        plot = Path(tmp) / "loss_curve.png"
        plot_training(training["log_history"], plot)
        mlflow.log_artifact(str(plot), artifact_path="training")
    # The adapter alone is a few MB: what a user applies to their own copy of the base.
    mlflow.log_artifacts(str(adapter_dir), artifact_path="training/adapter")


@task(name="register", cache_policy=NO_CACHE)
def register_task(
    cfg: PipelineConfig,
    run_id: str,
    counts: dict[str, Any],
    dataset: dict[str, Any],
    training: dict[str, Any],
    student: EvalReport,
    base: EvalReport | None,
    champion: EvalReport | None = None,
) -> Registration:
    """`champion` is the current champion scored on this run's test set: the only figure
    the margin gate compares with (without it, the champion's own registered score counts
    only if it came from the same dataset)."""
    target = load_target(cfg.target)
    client = configure(cfg.registry)
    with mlflow.start_run(run_name=f"distill-{run_id}"):
        # Config holds env-var *names* for secrets, never values, so it is safe to log whole.
        mlflow.log_params(flatten("", cfg.model_dump(mode="json")))
        mlflow.log_metrics(
            numeric(student.metrics)
            | numeric(flatten("", counts), "data.")  # incl. data.labelling.cost_usd
            | numeric(training, "train.")
        )
        if base is not None:
            mlflow.log_metrics(numeric(base.metrics, "base."))
        if champion is not None:
            mlflow.log_metrics(numeric(champion.metrics, "champion."))
        log_training_history(training, Path(training["adapter_dir"]))
        test_df = pd.DataFrame(student.rows)
        mlflow.log_input(mlflow.data.from_pandas(test_df, name="heldout-test"), context="test")
        mlflow.log_table(test_df, artifact_file="eval/student_predictions.json")
        if base is not None:
            mlflow.log_table(pd.DataFrame(base.rows), artifact_file="eval/base_predictions.json")
        mlflow.log_dict(counts, "data/counts.json")
        example = pd.DataFrame([{"messages": "[]", "tools": "[]"}])
        settings = {
            "system_prompt": target.student_system_prompt,
            # What the candidate was evaluated with, fitted to its training answers.
            "max_new_tokens": student.metrics.get("max_new_tokens", cfg.evaluation.max_new_tokens),
            "batch_size": cfg.evaluation.batch_size,
        }
        logged = log_student_model(Path(training["merged_dir"]), settings, example)
        lineage = Lineage(
            target=target.name,
            prompt_version=target.prompt_version,
            dataset_hash=dataset["hash"],
            teacher_model=cfg.teacher.model,
            base_model=cfg.student.base_model,
            training_config_hash=config_hash(cfg.training),
            code_version=code_version(),
            pipeline_run=run_id,
            training_mode=training["mode"],
        )
        mlflow.set_tags(lineage.tags())
        candidate = Candidate(
            model_uri=logged.model_uri,
            primary=target.metric.primary,
            metrics=student.metrics,
            lineage=lineage,
            dataset_sizes=dataset.get("sizes", {}),
            base_metrics=base.metrics if base else None,
            champion_metrics=champion.metrics if champion else None,
        )
        registration = register_candidate(client, cfg.registry, candidate)
    get_run_logger().info(
        "registered %s v%s %s: %s",
        registration.name,
        registration.version,
        registration.aliases,
        registration.decision,
    )
    return registration


@task(name="record-review", cache_policy=NO_CACHE)
def review_task(
    cfg: PipelineConfig, registration: Registration, approve: bool, comment: str, by: str
) -> dict[str, Any] | None:
    """A reviewer's decision from the Prefect UI, recorded on the version (and applied)."""
    from stillroom.registry import record_review

    move = record_review(
        configure(cfg.registry),
        registration.name,
        registration.version,
        "approve" if approve else "reject",
        comment,
        by=by,
    )
    get_run_logger().info(
        "review of %s v%s: %s%s",
        registration.name,
        registration.version,
        "approved" if approve else "rejected",
        f" ({comment})" if comment else "",
    )
    return move
