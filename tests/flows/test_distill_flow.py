"""The whole loop on the smoke profile under Prefect's test harness, against real local
services (moto S3, replay teacher), a real trainer subprocess and a real MLflow store."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from flows.demo import run_demo
from stillroom.config import load_config
from stillroom.registry import tracking_uri


@pytest.fixture(scope="module")
def first_run(harness: None, home: Path) -> dict:
    return run_demo("smoke", [])


def client() -> MlflowClient:
    uri = tracking_uri(load_config("smoke").registry)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_counts_reconcile(first_run: dict) -> None:
    sampling, labels = first_run["sampling"], first_run["labelling"]
    assert sampling["listed"] == 52 and sampling["not_examined"] == 0  # smoke reads them all
    assert (
        sampling["sampled"] + sampling["rejected"] + sampling["over_quota"] == sampling["examined"]
    )
    reasons = sampling["rejected_by_reason"]
    assert {k: reasons[k] for k in ("empty", "missing_messages", "not_json", "not_utf8")} == {
        "empty": 1,
        "missing_messages": 1,
        "not_json": 1,
        "not_utf8": 1,
    }
    assert sampling["sampled"] >= 40
    assert sampling["sampled"] == labels["labelled"] + labels["quarantined"] + labels["skipped"]
    assert labels["skipped"] == 0 and labels["cost_usd"] > 0
    sizes = first_run["dataset"]["sizes"]
    assert sum(sizes.values()) == labels["labelled"]


def test_training_ran_and_was_measured(first_run: dict) -> None:
    training = first_run["training"]
    assert training["steps"] == 4 and training["mode"] == "LoRA (fp32 base)"
    assert training["train_tokens_per_second"] > 0
    # Four steps of LoRA must already move validation loss (on the answer tokens) down.
    assert training["eval_loss_after"] < training["eval_loss_before"]
    # The train flow was handed URIs and left its outputs in S3, not at a worker's path.
    run_prefix = f"s3://stillroom/runs/{first_run['run_id']}/training/"
    assert training["merged_uri"] == run_prefix + "merged"
    assert training["adapter_uri"] == run_prefix + "adapter"


def test_training_curves_reach_mlflow(first_run: dict) -> None:
    reg = first_run["registration"]
    run_id = client().get_model_version(reg["name"], reg["version"]).run_id
    steps = [m.step for m in client().get_metric_history(run_id, "train.step_loss")]
    assert steps == [1, 2, 3, 4]  # smoke logs every step
    val_steps = [m.step for m in client().get_metric_history(run_id, "train.val_loss")]
    assert val_steps == [2, 4]  # every eval_steps=2
    assert client().get_metric_history(run_id, "train.learning_rate")
    artifacts = {a.path for a in client().list_artifacts(run_id, "training")}
    assert {"training/loss_curve.png", "training/adapter"} <= artifacts


def test_registered_version_has_computed_accuracy_and_challenger_alias(first_run: dict) -> None:
    reg = first_run["registration"]
    version = client().get_model_version_by_alias(reg["name"], "challenger")
    assert str(version.version) == reg["version"]
    run = client().get_run(version.run_id)
    accuracy = run.data.metrics["accuracy"]
    assert accuracy == pytest.approx(first_run["student"]["accuracy"])
    assert (
        0.0 <= accuracy <= 1.0
        and run.data.metrics["count"] == first_run["dataset"]["sizes"]["test"]
    )
    assert version.tags["dataset_hash"] == first_run["dataset"]["hash"]
    assert run.data.metrics["base.count"] == run.data.metrics["count"]  # same test set
    # The teacher's bill and the intake counts sit beside the accuracy they bought.
    labels = first_run["labelling"]
    assert run.data.metrics["data.labelling.cost_usd"] == pytest.approx(labels["cost_usd"])
    assert run.data.metrics["data.sampling.listed"] == 52
    # A 4-step tiny model cannot clear the 0.5 floor, so it must not become champion.
    assert accuracy < 0.5
    with pytest.raises(MlflowException):
        client().get_model_version_by_alias(reg["name"], "champion")


def test_champion_moves_only_through_the_gate(first_run: dict) -> None:
    second = run_demo("smoke", ["registry.min_accuracy=0.0"])
    reg = second["registration"]
    assert int(reg["version"]) == int(first_run["registration"]["version"]) + 1
    champion = client().get_model_version_by_alias(reg["name"], "champion")
    assert str(champion.version) == reg["version"] and "promoted" in champion.tags["promotion"]


def paused_flow_run_id(timeout_s: float = 600) -> object:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    paused = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as prefect:
            runs = prefect.read_flow_runs(flow_run_filter=paused)
        if runs:
            return runs[0].id
        time.sleep(1)
    raise TimeoutError("the flow never paused for review")


def test_manual_review_pauses_scores_the_champion_and_records_the_verdict(
    first_run: dict,
) -> None:
    from prefect.flow_runs import resume_flow_run

    champion_before = client().get_model_version_by_alias(
        first_run["registration"]["name"], "champion"
    )
    outcome: dict = {}
    worker = threading.Thread(
        target=lambda: outcome.update(
            run_demo("smoke", ["registry.min_accuracy=0.0", "registry.review=manual"])
        )
    )
    worker.start()
    resume_flow_run(
        paused_flow_run_id(),
        run_input={"approve": False, "comment": "needs more data", "reviewer": "pytest"},
    )
    worker.join(timeout=600)
    reg = outcome["registration"]
    version = client().get_model_version(reg["name"], reg["version"])
    assert version.tags["review.status"] == "rejected" and version.tags["review.by"] == "pytest"
    assert "champion" not in reg["aliases"] and reg["decision"].startswith("rejected in review")
    champion_after = client().get_model_version_by_alias(reg["name"], "champion")
    assert champion_after.version == champion_before.version
    # The champion was scored on this run's test set, beside baseline and candidate.
    assert outcome["champion"]["version"] == str(champion_before.version)
    assert outcome["champion"]["count"] == outcome["student"]["count"]
    models = [row["model"] for row in outcome["comparison"]]
    assert models == ["baseline", "candidate", f"champion v{champion_before.version}", "teacher"]
    assert version.tags["vs_champion.version"] == str(champion_before.version)
    artifacts = {a.path for a in client().list_artifacts(version.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/per_tool.png"} <= artifacts
