"""Tasks for the model half of the loop: prepare the base, train, evaluate, register."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import INPUTS, NO_CACHE

from stillroom.config import PipelineConfig
from stillroom.env import state_dir
from stillroom.evaluation import EvalReport, evaluate_model
from stillroom.models import resolve_base_model
from stillroom.storage import download_dir, make_s3_client, parse_s3_uri, put_json, upload_dir
from stillroom.targets import load_target
from stillroom.training import TrainSpec, launch_training


def dataset_corpus(dataset_dir: Path) -> list[str]:
    """Text a locally trained tokenizer (the `tiny` test model) learns its merges from: the
    dataset itself, so any worker holding the dataset builds the same tiny model."""
    from datasets import load_from_disk

    dataset = load_from_disk(str(dataset_dir))
    return [
        row["messages"] + row["tools"] + row["answer"]
        for name in sorted(dataset)
        for row in dataset[name]
    ]


@task(name="prepare-base-model", cache_policy=NO_CACHE)
def prepare_base_task(cfg: PipelineConfig, models_dir: Path, dataset_dir: Path) -> Path:
    path = resolve_base_model(
        cfg.student.base_model, models_dir, corpus=dataset_corpus(dataset_dir)
    )
    get_run_logger().info("base model %s at %s", cfg.student.base_model, path)
    return path


def portable(metrics: dict[str, Any], output_uri: str) -> dict[str, Any]:
    """Training metrics with the worker's local paths replaced by where the outputs went."""
    local = {"adapter_dir", "merged_dir"}
    return {k: v for k, v in metrics.items() if k not in local} | {
        "adapter_uri": f"{output_uri}/adapter",
        "merged_uri": f"{output_uri}/merged",
        "metrics_uri": f"{output_uri}/metrics.json",
    }


# A retry (training.retries) relaunches on the same worker and resumes from the last
# checkpoint in `work`; once trained, a retried flow run gets the cached result.
@task(name="train", retry_delay_seconds=10, cache_policy=INPUTS, persist_result=True)
def train_task(
    cfg: PipelineConfig, run_id: str, dataset_uri: str, output_uri: str
) -> dict[str, Any]:
    """Train on whichever worker runs this: inputs and outputs are S3 URIs, never paths.

    The dataset is fetched into this worker's state folder, the base model is resolved here
    (packaged models need no network), and the adapter, merged model and metrics go back
    to `output_uri`, where the flow (or any later stage) reads them.
    """
    s3 = make_s3_client(cfg.storage)
    work = state_dir() / "work" / run_id
    dataset_dir = work / "dataset"
    if not (dataset_dir / "dataset_dict.json").is_file():
        download_dir(s3, dataset_uri, dataset_dir)
    base_dir = prepare_base_task.fn(cfg, state_dir() / "models", dataset_dir)
    spec = TrainSpec(
        dataset_dir=str(dataset_dir),
        base_model_dir=str(base_dir),
        output_dir=str(work / "training"),
        system_prompt=load_target(cfg.target).student_system_prompt,
        quantization=cfg.student.quantization,
        training=cfg.training,
    )
    metrics = launch_training(spec)
    upload_dir(s3, Path(metrics["adapter_dir"]), f"{output_uri}/adapter")
    upload_dir(s3, Path(metrics["merged_dir"]), f"{output_uri}/merged")
    result = portable(metrics, output_uri)
    put_json(s3, *parse_s3_uri(result["metrics_uri"]), result)
    get_run_logger().info(
        "trained %s: %d steps, loss %.3f, val loss %.3f -> %.3f, %.0f tokens/s, outputs in %s",
        metrics["mode"],
        metrics["steps"],
        metrics["train_loss"],
        metrics["eval_loss_before"],
        metrics["eval_loss_after"],
        metrics["train_tokens_per_second"],
        output_uri,
    )
    return result


@task(name="fetch-trained-model", cache_policy=NO_CACHE)
def fetch_trained_task(cfg: PipelineConfig, training: dict[str, Any], dest: Path) -> dict[str, Any]:
    """The trained student's files from S3 onto this machine, for evaluation and registry."""
    s3 = make_s3_client(cfg.storage)
    local = {"adapter_dir": dest / "adapter", "merged_dir": dest / "merged"}
    download_dir(s3, training["adapter_uri"], local["adapter_dir"])
    download_dir(s3, training["merged_uri"], local["merged_dir"])
    return training | {k: str(v) for k, v in local.items()}


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
