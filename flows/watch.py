"""The drift watch: the champion scored on fresh teacher labels, a retrain when it drifts.

    python -m flows.watch --profile demo storage.endpoint_url=http://127.0.0.1:9000 \
        teacher.base_url=http://127.0.0.1:8765/v1

Samples a few recent documents, has the teacher label them, scores the champion on them,
logs the agreement to MLflow (experiment `watch.experiment`, one run per watch) and, when
the rules in `stillroom/drift.py` call for it, starts the `watch.deployment` distill run
without waiting for it. Deployed on a schedule (see prefect.yaml); the S3 and teacher it
talks to are the config's, as for distill.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, date, datetime
from typing import Any

from stillroom.env import apply_offline_env, state_dir

apply_offline_env()  # before prefect/mlflow import: they read these settings on import

from prefect import flow  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.deployments import run_deployment  # noqa: E402

from stillroom.config import PipelineConfig, WatchConfig, profile_parser  # noqa: E402
from stillroom.drift import (  # noqa: E402
    Decision,
    Observation,
    decide_trigger,
    decision_markdown,
    distill_parameters,
    documents_in_window,
    hold_for,
    score_rows,
    watch_sampling,
)
from stillroom.evaluation import EvalReport  # noqa: E402
from stillroom.params import WatchParams  # noqa: E402
from stillroom.targets import load_target  # noqa: E402
from stillroom.teacher import LabelResult  # noqa: E402
from tasks.data import label_task, sample_task  # noqa: E402
from tasks.model import fetch_champion_task, scalars  # noqa: E402
from tasks.watch import (  # noqa: E402
    count_new_task,
    recent_runs_task,
    record_agreement_task,
    record_decision_task,
    score_task,
)


def watch_run_key() -> str:
    """`watch-` + when this flow run was scheduled + its id: a retry of the run keeps the key,
    so the data tasks' persisted sample and labels are found again (as in distill)."""
    from prefect.runtime import flow_run

    scheduled = flow_run.scheduled_start_time
    return f"watch-{scheduled.astimezone(UTC):%Y%m%dT%H%M%SZ}-{str(flow_run.id)[:8]}"


@dataclasses.dataclass
class Measurement:
    observation: Observation
    counts: dict[str, Any]  # documents: listed, in the window, sampled, labelled, new
    sampling: dict[str, Any]
    labelling: dict[str, Any] | None  # None: nothing was labelled (no champion to score)
    report: EvalReport | None


def measure(cfg: PipelineConfig, run_id: str, today: date) -> Measurement:
    recent = cfg.model_copy(update={"sampling": watch_sampling(cfg.sampling, cfg.watch, today)})
    manifest = sample_task(recent, run_id)
    found = fetch_champion_task(cfg, state_dir() / "runs" / run_id / "champion")
    labels: LabelResult | None = None
    report: EvalReport | None = None
    new_documents: int | None = None
    rows: list[dict[str, str]] = []
    # Without a champion there is nothing to score, so the teacher is not paid for labels.
    if found:
        labels = label_task(recent, run_id, manifest)
        rows = score_rows(labels.labelled)
        report = score_task(cfg, found[1], rows) if rows else None
        new_documents = count_new_task(cfg, found[0])
    primary = load_target(cfg.target).metric.primary
    listed_in_window = documents_in_window(
        manifest.listed, manifest.listed_by_stratum, cfg.watch, today
    )
    return Measurement(
        observation=Observation(
            champion_version=found[0] if found else None,
            primary=primary,
            agreement=report.metrics[primary] if report else None,
            scored=len(rows),
            new_documents=new_documents,
        ),
        counts={
            "listed": manifest.listed,
            "in_window": listed_in_window,
            "sampled": len(manifest.items),
            "labelled": len(rows),
            "new_since_champion": new_documents,
        },
        # Per-stratum counts are per date: a table's worth, not metric names.
        sampling={k: v for k, v in manifest.counts().items() if k != "strata"},
        labelling=labels.counts() if labels else None,
        report=report,
    )


def trigger_distill(cfg: WatchConfig, run_id: str) -> dict[str, Any]:
    """Start the retrain and return at once (timeout=0): a distill run takes far longer than
    a watch should. The idempotency key lets a retried watch find the run it started."""
    with get_client(sync_client=True) as client:
        deployed = client.read_deployment_by_name(cfg.deployment).parameters
    run = run_deployment(
        cfg.deployment,
        parameters=distill_parameters(cfg, deployed),
        timeout=0,
        tags=["watch"],
        idempotency_key=run_id,
    )
    return {
        "id": str(run.id),
        "name": run.name,
        "deployment": cfg.deployment,
        "parameters": run.parameters,
    }


def decide(cfg: WatchConfig, observation: Observation) -> Decision:
    decision = decide_trigger(observation, cfg)
    if not decision.trigger:
        return decision  # the deployment is only looked up (and must exist) when wanted
    runs = recent_runs_task(cfg.deployment)
    return hold_for(decision, runs, datetime.now(UTC), cfg.cooldown_hours)


@flow(name="watch")
def watch(params: WatchParams) -> dict[str, Any]:
    cfg: PipelineConfig = params.load()
    run_id = watch_run_key()
    m = measure(cfg, run_id, datetime.now(UTC).date())
    logged = {"documents": m.counts, "sampling": m.sampling, "labelling": m.labelling or {}}
    mlflow_run_id = record_agreement_task(cfg, run_id, m.observation, logged, m.report)
    decision = decide(cfg.watch, m.observation)
    triggered = trigger_distill(cfg.watch, run_id) if decision.trigger else None
    record_decision_task(cfg, mlflow_run_id, decision, triggered)
    summary = {
        "run_id": run_id,
        "profile": cfg.profile,
        "champion": m.observation.champion_version,
        "metric": m.observation.primary,
        "agreement": m.observation.agreement,
        "min_agreement": cfg.watch.min_agreement,
        "counts": m.counts,
        "labelling": m.labelling,
        "champion_metrics": scalars(m.report.metrics) if m.report else None,
        "decision": dataclasses.asdict(decision) | {"summary": decision.summary()},
        "triggered": triggered,
        "mlflow_run_id": mlflow_run_id,
    }
    create_markdown_artifact(
        key="watch-decision",
        markdown=decision_markdown(summary),
        description=f"drift watch {run_id}: {decision.summary()}",
    )
    return summary


def main() -> None:
    args = profile_parser("Run the drift watch.").parse_args()
    params = WatchParams(profile=args.profile, overrides=args.overrides)
    print(json.dumps(watch(params), indent=2, default=str))


if __name__ == "__main__":
    main()
