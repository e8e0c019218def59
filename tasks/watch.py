"""Tasks of the drift watch: score the champion on fresh labels, count what arrived since it,
read the runs a trigger would pile onto, and record the agreement series in MLflow."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from stillroom.config import PipelineConfig
from stillroom.drift import Decision, Observation, RecentRun, count_new_documents
from stillroom.evaluation import EvalReport, evaluate_model
from stillroom.registry import configure, make_client
from stillroom.storage import make_s3_client
from stillroom.targets import load_target
from tasks.model import scalars
from tasks.registry import flatten, numeric


@task(name="score-champion", cache_policy=NO_CACHE)
def score_task(cfg: PipelineConfig, model_dir: Path, rows: list[dict[str, str]]) -> EvalReport:
    report = evaluate_model(
        model_dir,
        rows,
        load_target(cfg.target),
        cfg.evaluation,
        # Agreement is the question here; serving latency is the distill run's to measure.
        measure_requests=False,
        # The generation cap fitted to these answers, as distill fits it to its train split.
        train_answers=[r["answer"] for r in rows],
    )
    get_run_logger().info("champion on fresh labels: %s", json.dumps(scalars(report.metrics)))
    create_table_artifact(
        key="watch-predictions",
        table=report.rows[:50],
        description="the champion on freshly labelled recent documents: first 50 predictions",
    )
    return report


# A listing is idempotent: retrying a flaky S3 call is safe.
@task(name="count-new-documents", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def count_new_task(cfg: PipelineConfig, version: str) -> int:
    """Objects under the sampling prefix written since the champion version was registered.

    Registration comes after its run sampled, so documents that arrived while it trained are
    not counted: the figure errs low by one distill run's duration, never high.
    """
    registered = make_client(cfg.registry).get_model_version(cfg.registry.model_name, version)
    since = datetime.fromtimestamp(registered.creation_timestamp / 1000, tz=UTC)
    s3 = make_s3_client(cfg.storage)
    count = count_new_documents(s3, cfg.storage.bucket, cfg.sampling.prefix, since)
    get_run_logger().info("%d objects since champion v%s (%s)", count, version, since.isoformat())
    return count


@task(name="recent-runs", cache_policy=NO_CACHE)
def recent_runs_task(deployment: str, limit: int = 20) -> list[RecentRun]:
    """The newest runs of `deployment`; raises if it is not deployed, which a trigger needs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(deployment)
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[found.id])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=limit,
        )
    return [
        RecentRun(
            id=str(run.id),
            name=run.name,
            state=run.state.name if run.state else "unknown",
            created=run.created or run.expected_start_time,
            final=bool(run.state and run.state.is_final()),
        )
        for run in runs
    ]


@task(name="record-agreement", cache_policy=NO_CACHE)
def record_agreement_task(
    cfg: PipelineConfig,
    run_id: str,
    observation: Observation,
    counts: dict[str, Any],
    report: EvalReport | None,
) -> str:
    """One MLflow run per watch, in its own experiment: its `agreement` metrics, across runs,
    are the series to chart (each carries its timestamp). Returns the MLflow run id.

    Logged before the decision, so a trigger that fails still leaves the measurement.
    """
    configure(cfg.registry.model_copy(update={"experiment": cfg.watch.experiment}))
    with mlflow.start_run(run_name=run_id) as run:
        mlflow.log_params(flatten("watch", cfg.watch.model_dump(mode="json")))
        mlflow.set_tags(
            {
                "watch.run_id": run_id,
                "watch.profile": cfg.profile,
                "champion.version": observation.champion_version or "none",
                "agreement.metric": observation.primary,
            }
        )
        if observation.agreement is not None:
            mlflow.log_metric("agreement", observation.agreement)
        mlflow.log_metrics(numeric(flatten("", counts), "data."))
        if report is not None:
            mlflow.log_metrics(numeric(report.metrics, "champion."))
            mlflow.log_table(pd.DataFrame(report.rows), artifact_file="watch/predictions.json")
    return run.info.run_id


@task(name="record-decision", cache_policy=NO_CACHE)
def record_decision_task(
    cfg: PipelineConfig,
    mlflow_run_id: str,
    decision: Decision,
    triggered: dict[str, Any] | None,
) -> None:
    """The decision and its reasons as tags of the watch's MLflow run, and the run started."""
    tags = {
        "decision.trigger": str(decision.trigger).lower(),
        "decision.summary": decision.summary(),
        "decision.reason": "; ".join(decision.reasons) or "none",
        "decision.held": decision.held or "",
        **{f"decision.check.{name}": found for name, found in decision.checks.items()},
    }
    if triggered:
        tags |= {
            "distill.deployment": triggered["deployment"],
            "distill.flow_run_id": triggered["id"],
            "distill.flow_run_name": triggered["name"],
            "distill.parameters": json.dumps(triggered["parameters"]),
        }
    make_client(cfg.registry)  # points MLflow at the store; the run itself exists
    with mlflow.start_run(run_id=mlflow_run_id):
        mlflow.set_tags({k: v for k, v in tags.items() if v})
        mlflow.log_metric("triggered", float(triggered is not None))
    get_run_logger().info("watch decision: %s", decision.summary())
