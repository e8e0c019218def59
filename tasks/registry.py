"""Task that records a run in MLflow and moves the registry aliases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from stillroom.config import PipelineConfig
from stillroom.evaluation import EvalReport
from stillroom.registry import Registration, configure, log_student_model, register_candidate
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


@task(name="register", cache_policy=NO_CACHE)
def register_task(
    cfg: PipelineConfig,
    run_id: str,
    counts: dict[str, Any],
    dataset: dict[str, Any],
    training: dict[str, Any],
    student: EvalReport,
    base: EvalReport | None,
) -> Registration:
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
        for point in training["loss_curve"]:
            mlflow.log_metric("train.loss_curve", point["loss"], step=point["step"])
        test_df = pd.DataFrame(student.rows)
        mlflow.log_input(mlflow.data.from_pandas(test_df, name="heldout-test"), context="test")
        mlflow.log_table(test_df, artifact_file="eval/student_predictions.json")
        if base is not None:
            mlflow.log_table(pd.DataFrame(base.rows), artifact_file="eval/base_predictions.json")
        mlflow.log_dict(counts, "data/counts.json")
        example = pd.DataFrame([{"messages": "[]", "tools": "[]"}])
        settings = {
            "system_prompt": target.student_system_prompt,
            "max_new_tokens": cfg.evaluation.max_new_tokens,
            "batch_size": cfg.evaluation.batch_size,
        }
        logged = log_student_model(Path(training["merged_dir"]), settings, example)
        tags = {
            "target": target.name,
            "prompt_version": target.prompt_version,
            "dataset_hash": dataset["hash"],
            "base_model": cfg.student.base_model,
            "teacher_model": cfg.teacher.model,
            "pipeline_run": run_id,
            "training_mode": training["mode"],
        }
        mlflow.set_tags(tags)
        registration = register_candidate(
            client, cfg.registry, logged.model_uri, target.metric.primary, student.metrics, tags
        )
    get_run_logger().info(
        "registered %s v%s %s: %s",
        registration.name,
        registration.version,
        registration.aliases,
        registration.decision,
    )
    return registration
