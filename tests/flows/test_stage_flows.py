"""The stages as flows of their own, chained by run id and S3 URIs only, as someone would
run them from their deployments: `label`, then `train` on the dataset it built, then
`evaluate-and-promote`, which finds everything else under runs/<run_id>/ in S3."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from stillroom import services
from stillroom.config import load_config
from stillroom.params import EvaluateParams, GateParams, LabelParams
from stillroom.registry import tracking_uri
from stillroom.seeding import seed_bfcl
from stillroom.storage import make_s3_client
from stillroom.targets import load_target


@pytest.fixture(scope="module")
def stack(harness: None, home: Path) -> Iterator[list[str]]:
    """moto S3 seeded with the smoke documents and the replay teacher; yields the
    overrides that point a run at them."""
    services.ensure_local_aws_credentials()
    with services.running(services.start_moto(home / "logs")) as s3_server:
        cfg = load_config("smoke", [f"storage.endpoint_url={s3_server.url}"])
        replay = home / "teacher" / "replay.jsonl"
        pii = load_target(cfg.target).pii
        seed_bfcl(make_s3_client(cfg.storage), cfg.storage.bucket, cfg.seed, replay, pii)
        with services.running(services.start_teacher(replay, home / "logs")) as teacher:
            yield [f"storage.endpoint_url={s3_server.url}", f"teacher.base_url={teacher.url}"]


def test_stages_run_apart_and_chain_through_s3(stack: list[str], home: Path) -> None:
    from flows.evaluate_and_promote import evaluate_and_promote
    from flows.label import label
    from flows.train import TrainParams, train

    labelled = label(LabelParams(profile="smoke", run_id="apart-1", overrides=stack))
    counts = labelled["labelling"]
    assert labelled["sampling"]["sampled"] == (
        counts["labelled"] + counts["quarantined"] + counts["skipped"]
    )
    dataset = labelled["dataset"]
    assert dataset["uri"] == "s3://stillroom/runs/apart-1/dataset" and "path" not in dataset

    output_uri = "s3://stillroom/models/apart-1"  # not the run's folder: named in the form
    trained = train(
        TrainParams(
            run_id="apart-1",
            dataset_uri=dataset["uri"],
            output_uri=output_uri,
            profile="smoke",
            overrides=stack,
        )
    )
    assert trained["merged_uri"] == f"{output_uri}/merged"

    # As on another machine: nothing of the run left locally but what S3 holds.
    shutil.rmtree(home / "runs" / "apart-1")
    summary = evaluate_and_promote(
        EvaluateParams(
            run_id="apart-1",
            training_uri=output_uri,
            profile="smoke",
            gate=GateParams(min_accuracy=0.0),
            overrides=stack,
        )
    )
    assert summary["dataset"]["hash"] == dataset["hash"]
    assert summary["dataset"]["sizes"] == dataset["sizes"]
    assert {k: summary[k] for k in ("sampling", "labelling")} == {
        k: labelled[k] for k in ("sampling", "labelling")
    }
    assert summary["training"]["steps"] == trained["steps"]
    registration = summary["registration"]
    assert registration["promoted"] and "champion" in registration["aliases"]

    uri = tracking_uri(load_config("smoke").registry)
    mlflow = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = mlflow.get_model_version(registration["name"], registration["version"])
    run = mlflow.get_run(version.run_id)
    assert run.data.tags["dataset_hash"] == dataset["hash"]
    assert run.data.tags["pipeline_run"] == "apart-1"


def test_evaluating_a_run_says_which_stage_it_still_needs(stack: list[str]) -> None:
    from flows.evaluate_and_promote import evaluate_and_promote
    from flows.label import label

    with pytest.raises(FileNotFoundError, match="run the label stage"):
        evaluate_and_promote(EvaluateParams(run_id="never-run", profile="smoke", overrides=stack))
    label(LabelParams(profile="smoke", run_id="apart-2", overrides=stack))
    with pytest.raises(FileNotFoundError, match="run the train stage"):
        evaluate_and_promote(EvaluateParams(run_id="apart-2", profile="smoke", overrides=stack))
