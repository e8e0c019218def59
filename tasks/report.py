"""Task that writes the evaluation report and files it with the run in Prefect and MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from stillroom.config import PipelineConfig
from stillroom.eval_report import write_report
from stillroom.evaluation import EvalReport, teacher_figures, worst_examples
from stillroom.registry import configure


@task(name="evaluation-report", cache_policy=NO_CACHE)
def report_task(
    cfg: PipelineConfig,
    run_id: str,
    models: dict[str, EvalReport | None],
    labelled: list[dict[str, Any]],
    teacher_cost_per_1k: float | None,
    test_rows: list[dict[str, str]],
    registration: Any,
    out_dir: Path,
) -> dict[str, Any]:
    candidate = models["candidate"]
    assert candidate is not None
    written = write_report(
        out_dir,
        f"Evaluation of {registration.name} v{registration.version} (run {run_id})",
        models,
        teacher_figures(labelled, teacher_cost_per_1k),
        worst_examples(candidate, test_rows, cfg.evaluation.worst_examples),
        registration.decision,
    )
    client: MlflowClient = configure(cfg.registry)
    version = client.get_model_version(registration.name, registration.version)
    client.log_artifacts(version.run_id, str(out_dir), "report")
    create_markdown_artifact(
        key="evaluation-report",
        markdown=written["markdown"],
        description=f"baseline vs candidate vs champion vs teacher, run {run_id}",
    )
    get_run_logger().info("evaluation report: %s (logged to MLflow run)", out_dir)
    return written
