"""Tasks for the model half of the loop: prepare the base, train, evaluate, register."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from stillroom.config import PipelineConfig
from stillroom.evaluation import EvalReport, evaluate_model
from stillroom.models import resolve_base_model
from stillroom.targets import load_target
from stillroom.training import TrainSpec, launch_training


@task(name="prepare-base-model", cache_policy=NO_CACHE)
def prepare_base_task(cfg: PipelineConfig, models_dir: Path, corpus: list[str]) -> Path:
    path = resolve_base_model(cfg.student.base_model, models_dir, corpus=corpus)
    get_run_logger().info("base model %s at %s", cfg.student.base_model, path)
    return path


@task(name="train", cache_policy=NO_CACHE)
def train_task(
    cfg: PipelineConfig, dataset_dir: Path, base_dir: Path, out_dir: Path
) -> dict[str, Any]:
    spec = TrainSpec(
        dataset_dir=str(dataset_dir),
        base_model_dir=str(base_dir),
        output_dir=str(out_dir),
        system_prompt=load_target(cfg.target).student_system_prompt,
        quantization=cfg.student.quantization,
        training=cfg.training,
    )
    metrics = launch_training(spec)
    get_run_logger().info(
        "trained %s: %d steps, loss %.3f, val loss %.3f -> %.3f, %.0f tokens/s",
        metrics["mode"],
        metrics["steps"],
        metrics["train_loss"],
        metrics["eval_loss_before"],
        metrics["eval_loss_after"],
        metrics["train_tokens_per_second"],
    )
    return metrics


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(
    cfg: PipelineConfig, model_dir: Path, dataset_dir: Path, label: str
) -> EvalReport:
    from datasets import load_from_disk

    test_rows = load_from_disk(str(dataset_dir))["test"].to_list()
    report = evaluate_model(model_dir, test_rows, load_target(cfg.target), cfg.evaluation)
    get_run_logger().info("%s on held-out test: %s", label, json.dumps(report.metrics))
    create_table_artifact(
        key=f"eval-{label}",
        table=report.rows[:50],
        description=f"{label}: first 50 held-out predictions against the teacher's answers",
    )
    return report
