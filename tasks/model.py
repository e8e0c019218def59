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


def scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline figures; per-tool tables go to the report, not the log line."""
    return {k: v for k, v in metrics.items() if not isinstance(v, dict | list)}


@task(name="fetch-champion", cache_policy=NO_CACHE)
def fetch_champion_task(cfg: PipelineConfig, dest: Path) -> tuple[str, Path] | None:
    """The serving champion's model, so it is scored on this run's test set too."""
    from stillroom.registry import configure
    from stillroom.serving import fetch_champion

    found = fetch_champion(configure(cfg.registry), cfg.registry.model_name, dest)
    get_run_logger().info("champion: %s", f"v{found[0]}" if found else "none yet")
    return found


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(
    cfg: PipelineConfig,
    model_dir: Path,
    dataset_dir: Path,
    label: str,
    measure_requests: bool = True,
) -> EvalReport:
    from datasets import load_from_disk

    dataset = load_from_disk(str(dataset_dir))
    test_rows = dataset["test"].to_list()
    target = load_target(cfg.target)
    report = evaluate_model(
        model_dir,
        test_rows,
        target,
        cfg.evaluation,
        measure_requests,
        train_answers=dataset["train"]["answer"],
    )
    get_run_logger().info("%s on held-out test: %s", label, json.dumps(scalars(report.metrics)))
    create_table_artifact(
        key=f"eval-{label}",
        table=report.rows[:50],
        description=f"{label}: first 50 held-out predictions against the teacher's answers",
    )
    return report
