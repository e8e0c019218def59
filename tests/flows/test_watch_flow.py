"""The drift watch on the smoke profile under Prefect's test harness, against real local
services (moto S3, the replay teacher, an MLflow store) and a real `distill` deployment.

One champion for the module: a 4-step tiny model promoted by dropping the floor, which
disagrees with the teacher almost everywhere. No worker runs, so a triggered distill run
stays scheduled: what is checked is that it was created, with the parameters the watch set.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import pytest
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun

from stillroom import services
from stillroom.config import load_config
from stillroom.params import DistillParams, WatchParams
from stillroom.registry import tracking_uri
from stillroom.seeding import seed_bfcl
from stillroom.storage import iter_objects, make_s3_client
from stillroom.targets import load_target

# The documents are logged today, so they sit inside the watch's window whatever the date.
TODAY = datetime.now(UTC).date().isoformat()
# What the watch asks the distill run for: the assertion is that it arrives as given.
DISTILL_OVERRIDES = ["registry.tracking_uri=http://mlflow:5000", "training.max_steps=8"]


@pytest.fixture(scope="module")
def stack(harness: None, home: Path) -> Iterator[list[str]]:
    """moto S3 seeded with the smoke documents and the replay teacher, for the module;
    yields the overrides that point a run at them."""
    services.ensure_local_aws_credentials()
    with services.running(services.start_moto(home / "logs")) as s3_server:
        # Quoted: YAML would read a bare 2026-12-04 as a date, not the string the field is.
        seeding = [f"storage.endpoint_url={s3_server.url}", f"seed.date='{TODAY}'"]
        cfg = load_config("smoke", seeding)
        replay = home / "teacher" / "replay.jsonl"
        pii = load_target(cfg.target).pii
        seed_bfcl(make_s3_client(cfg.storage), cfg.storage.bucket, cfg.seed, replay, pii)
        with services.running(services.start_teacher(replay, home / "logs")) as teacher:
            yield [f"storage.endpoint_url={s3_server.url}", f"teacher.base_url={teacher.url}"]


@pytest.fixture(scope="module")
def champion(stack: list[str]) -> str:
    from flows.distill import distill

    overrides = [*stack, "registry.min_accuracy=0.0", "evaluation.evaluate_base=false"]
    summary = distill(DistillParams(profile="smoke", overrides=overrides))
    assert summary["registration"]["promoted"]
    return summary["registration"]["version"]


@pytest.fixture(scope="module")
def deployment(harness: None) -> UUID:
    """`distill/on-demand`, registered without a work pool: runs are created, none execute."""
    from flows.distill import distill

    return distill.to_deployment(name="on-demand").apply()


def distill_runs(deployment: UUID) -> list[FlowRun]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as prefect:
        return prefect.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment]))
        )


@pytest.fixture
def no_runs_yet(deployment: UUID) -> UUID:
    """Each test starts with no distill run pending, so an earlier trigger cannot hold it."""
    with get_client(sync_client=True) as prefect:
        for run in distill_runs(deployment):
            prefect.delete_flow_run(run.id)
    return deployment


def run_watch(stack: list[str], *overrides: str) -> dict:
    from flows.watch import watch

    watching = [
        *stack,
        "watch.distill_profile=smoke",
        f"watch.distill_overrides={json.dumps(DISTILL_OVERRIDES)}",
        *overrides,
    ]
    return watch(WatchParams(profile="smoke", overrides=watching))


def mlflow_client() -> MlflowClient:
    uri = tracking_uri(load_config("smoke").registry)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def latest_decision_markdown() -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as prefect:
        (artifact,) = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["watch-decision"])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    return str(artifact.data)


def test_a_champion_that_disagrees_with_fresh_labels_starts_a_distill_run(
    stack: list[str], champion: str, no_runs_yet: UUID
) -> None:
    out = run_watch(stack, "watch.new_documents_trigger=null")
    assert out["champion"] == champion and out["metric"] == "accuracy"
    counts = out["counts"]
    assert counts["in_window"] == counts["listed"] >= 52  # all logged today
    assert counts["sampled"] <= 40 and counts["labelled"] >= 30
    # distill labelled these same documents: the watch found every answer in the S3 cache.
    assert out["labelling"]["teacher_calls"] == 0
    assert out["agreement"] < 0.5
    decision = out["decision"]
    assert decision["trigger"] and decision["checks"]["cooldown"] == "clear"
    (reason,) = decision["reasons"]
    assert reason.startswith("agreement low: accuracy ")

    (run,) = distill_runs(no_runs_yet)
    assert str(run.id) == out["triggered"]["id"] and run.name == out["triggered"]["name"]
    assert run.parameters == {"params": {"profile": "smoke", "overrides": DISTILL_OVERRIDES}}
    assert run.state is not None and run.state.is_scheduled() and "watch" in run.tags

    mlflow = mlflow_client()
    logged = mlflow.get_run(out["mlflow_run_id"])
    assert mlflow.get_experiment(logged.info.experiment_id).name == "stillroom-watch"
    assert logged.data.metrics["agreement"] == pytest.approx(out["agreement"])
    assert logged.data.metrics["champion.count"] == counts["labelled"]
    assert logged.data.metrics["triggered"] == 1.0
    (point,) = mlflow.get_metric_history(logged.info.run_id, "agreement")
    assert point.timestamp > 0  # one point per watch: the series is across runs, over time
    tags = logged.data.tags
    assert tags["champion.version"] == champion
    assert tags["decision.trigger"] == "true" and tags["decision.reason"] == reason
    assert tags["distill.flow_run_id"] == str(run.id)
    assert json.loads(tags["distill.parameters"]) == run.parameters

    markdown = latest_decision_markdown()
    assert f"distill triggered: {reason}" in markdown and str(run.id) in markdown


def test_a_second_watch_waits_for_the_retrain_it_already_started(
    stack: list[str], champion: str, no_runs_yet: UUID
) -> None:
    first = run_watch(stack, "watch.new_documents_trigger=null")
    second = run_watch(stack, "watch.new_documents_trigger=null")
    assert first["triggered"] and second["triggered"] is None
    assert second["decision"]["reasons"] and not second["decision"]["trigger"]
    assert second["decision"]["held"].startswith(f"run {first['triggered']['name']} (Scheduled")
    assert len(distill_runs(no_runs_yet)) == 1
    tags = mlflow_client().get_run(second["mlflow_run_id"]).data.tags
    assert tags["decision.held"] == second["decision"]["held"]
    assert "distill.flow_run_id" not in tags


def test_a_champion_that_agrees_starts_nothing(
    stack: list[str], champion: str, no_runs_yet: UUID
) -> None:
    out = run_watch(stack, "watch.min_agreement=0.0", "watch.new_documents_trigger=null")
    decision = out["decision"]
    assert not decision["trigger"] and decision["held"] is None and out["triggered"] is None
    assert decision["checks"]["agreement"].startswith("ok: accuracy ")
    assert distill_runs(no_runs_yet) == []
    logged = mlflow_client().get_run(out["mlflow_run_id"])
    assert logged.data.metrics["agreement"] == pytest.approx(out["agreement"])
    assert logged.data.metrics["triggered"] == 0.0
    assert logged.data.tags["decision.trigger"] == "false"
    assert "distill.flow_run_id" not in logged.data.tags
    assert latest_decision_markdown().count("no trigger: ") == 1


def test_documents_arriving_after_the_champion_start_a_retrain(
    stack: list[str], champion: str, no_runs_yet: UUID
) -> None:
    cfg = load_config("smoke", stack)
    s3, bucket = make_s3_client(cfg.storage), cfg.storage.bucket
    logged_today = [o["Key"] for o in iter_objects(s3, bucket, f"requests/{TODAY}/")]
    for i, key in enumerate([k for k in logged_today if "/bad-" not in k][:5]):
        # Clients resending requests: new objects, known content (the teacher has answers).
        s3.copy_object(
            Bucket=bucket, Key=f"requests/{TODAY}/resent-{i}.json", CopySource=f"{bucket}/{key}"
        )
    out = run_watch(stack, "watch.min_agreement=0.0", "watch.new_documents_trigger=5")
    assert out["counts"]["new_since_champion"] == 5
    (reason,) = out["decision"]["reasons"]
    assert reason == f"new_documents enough: 5 since champion v{champion} >= 5"
    (run,) = distill_runs(no_runs_yet)
    assert str(run.id) == out["triggered"]["id"]
