"""The registry against a real `mlflow server` over HTTP (sqlite store and artifacts in
tmp_path): gates move `champion`, people promote and roll back, and all of it is recorded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from stillroom import services
from stillroom.cli import main
from stillroom.config import RegistryConfig
from stillroom.models import resolve_base_model
from stillroom.registry import (
    Candidate,
    Lineage,
    configure,
    log_student_model,
    read_history,
    record_review,
    register_candidate,
    rollback_champion,
)

DATASET = "a" * 64


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Module-wide `state_home`: the CLI must not touch the shared test home either."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("registry-home")
    mp.setenv("STILLROOM_HOME", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def server(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow-server")
    service = services.start_mlflow(
        root, backend_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_root=root / "artifacts"
    )
    with services.running(service):
        yield service.url


@pytest.fixture(scope="module")
def model_uri(server: str, home: Path) -> str:
    """One tiny student logged through the server; each test registers it as its versions."""
    configure(RegistryConfig(tracking_uri=server, experiment="registry-test"))
    model_dir = resolve_base_model("tiny", home / "models")
    example = pd.DataFrame([{"messages": "[]", "tools": "[]"}])
    settings = {"system_prompt": "Answer with JSON.", "max_new_tokens": 8, "batch_size": 2}
    with mlflow.start_run(run_name="registry-test"):
        return log_student_model(model_dir, settings, example).model_uri


def setup(server: str, name: str, **gates: Any) -> tuple[MlflowClient, RegistryConfig]:
    cfg = RegistryConfig(tracking_uri=server, experiment="registry-test", model_name=name, **gates)
    return configure(cfg), cfg


def candidate(uri: str, accuracy: float, champion: float | None = None) -> Candidate:
    lineage = Lineage(
        target="bfcl_tool_call",
        prompt_version="v1",
        dataset_hash=DATASET,
        teacher_model="replay-teacher",
        base_model="tiny",
        training_config_hash="0123456789abcdef",
        code_version="test",
        pipeline_run=f"run-{accuracy}",
    )
    return Candidate(
        model_uri=uri,
        primary="accuracy",
        metrics={"accuracy": accuracy, "latency_p95_ms": 12.0},
        lineage=lineage,
        dataset_sizes={"train": 30, "validation": 4, "test": 8},
        base_metrics={"accuracy": 0.0},
        champion_metrics=None if champion is None else {"accuracy": champion},
    )


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return client.get_registered_model(name).aliases


def cli_args(server: str, name: str, *args: str) -> list[str]:
    """A `stillroom` command line aimed at this server and model, as an operator types it."""
    return [
        *args,
        "--profile",
        "smoke",
        f"registry.tracking_uri={server}",
        f"registry.model_name={name}",
    ]


def cli(capsys: pytest.CaptureFixture[str], server: str, name: str, *args: str) -> Any:
    main(cli_args(server, name, *args))
    return json.loads(capsys.readouterr().out)


def test_gates_pick_the_champion_and_rollback_restores_the_previous_one(
    server: str, model_uri: str
) -> None:
    client, cfg = setup(server, "gated")

    first = register_candidate(client, cfg, candidate(model_uri, 0.6))
    assert first.promoted and first.aliases == ["challenger", "champion"]
    assert aliases(client, "gated") == {"challenger": "1", "champion": "1"}

    worse = register_candidate(client, cfg, candidate(model_uri, 0.55, champion=0.6))
    assert not worse.promoted and worse.aliases == ["challenger"]
    assert aliases(client, "gated") == {"challenger": "2", "champion": "1"}
    tags = client.get_model_version("gated", "2").tags
    assert tags["gate.min_margin"] == "fail: 0.550 vs v1 0.600 = -0.050 < margin +0.000"
    assert tags["gate.min_accuracy"] == "pass: 0.550 >= 0.500"
    assert tags["promotion"].startswith("kept as challenger: min_margin fail")
    assert tags["vs_champion.version"] == "1" and tags["vs_champion.accuracy"] == "0.6"

    better = register_candidate(client, cfg, candidate(model_uri, 0.7, champion=0.6))
    assert better.promoted
    assert aliases(client, "gated") == {"challenger": "3", "champion": "3"}

    back = rollback_champion(client, "gated", "v3 escalates too often", by="alice")
    assert (back["action"], back["version"], back["previous"]) == ("rollback", "1", "3")
    assert aliases(client, "gated") == {"challenger": "3", "champion": "1"}
    history = read_history(client, "gated")
    assert [(e["action"], e["version"], e["previous"]) for e in history] == [
        ("auto", "1", None),
        ("auto", "3", "1"),
        ("rollback", "1", "3"),
    ]
    assert history[-1]["by"] == "alice" and history[-1]["comment"] == "v3 escalates too often"
    with pytest.raises(ValueError, match="no earlier champion"):
        rollback_champion(client, "gated")

    # The champion's files come back through the server's artifact proxy.
    local = Path(mlflow.artifacts.download_artifacts("models:/gated@champion"))
    assert any(p.name == "config.json" for p in local.rglob("*"))


def test_every_version_carries_its_lineage_and_model_card(server: str, model_uri: str) -> None:
    client, cfg = setup(server, "carded")
    register_candidate(client, cfg, candidate(model_uri, 0.07))
    version = client.get_model_version("carded", "1")
    assert version.aliases == ["challenger"]
    tags = version.tags
    assert tags["dataset_hash"] == DATASET and tags["teacher_model"] == "replay-teacher"
    assert tags["prompt_version"] == "v1" and tags["base_model"] == "tiny"
    assert tags["training_config_hash"] == "0123456789abcdef" and tags["code_version"] == "test"
    assert tags["primary_metric"] == "accuracy" and tags["metric.accuracy"] == "0.07"
    assert tags["vs_champion.version"] == "none"
    assert tags["gate.min_accuracy"] == "fail: 0.070 < 0.500"
    assert tags["promotion"] == "kept as challenger: min_accuracy fail: 0.070 < 0.500"
    card = version.description
    assert "dataset `aaaaaaaaaaaa` (train 30 / validation 4 / test 8)" in card
    assert "| candidate | 0.070 | 12.0 |" in card and "| base model, untrained | 0.000 |" in card
    assert "| min_accuracy | fail: 0.070 < 0.500 |" in card


def test_cli_promote_of_a_failing_version_is_a_recorded_override(
    server: str, model_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client, cfg = setup(server, "overridden")
    register_candidate(client, cfg, candidate(model_uri, 0.6))
    register_candidate(client, cfg, candidate(model_uri, 0.1, champion=0.6))
    assert aliases(client, "overridden")["champion"] == "1"

    moved = cli(capsys, server, "overridden", "promote", "--version", "2", "--comment", "hotfix")
    assert (moved["action"], moved["version"], moved["previous"]) == ("promote", "2", "1")
    assert moved["override"] and moved["comment"] == "hotfix" and moved["by"]
    assert [g.split(" ")[0] for g in moved["failed_gates"]] == ["min_accuracy", "min_margin"]
    assert aliases(client, "overridden") == {"challenger": "2", "champion": "2"}
    assert read_history(client, "overridden")[-1] == moved
    note = client.get_model_version("overridden", "2").tags["override"]
    assert "despite: min_accuracy fail: 0.100 < 0.500" in note and note.endswith("(hotfix)")

    back = cli(capsys, server, "overridden", "rollback", "--comment", "undo hotfix")
    assert (back["action"], back["version"], back["override"]) == ("rollback", "1", False)
    assert aliases(client, "overridden")["champion"] == "1"

    with pytest.raises(SystemExit, match="already champion"):
        main(cli_args(server, "overridden", "promote", "--version", "1"))


def test_manual_review_waits_for_a_person(server: str, model_uri: str) -> None:
    client, cfg = setup(server, "reviewed", review="manual")
    first = register_candidate(client, cfg, candidate(model_uri, 0.6))
    assert not first.promoted and first.review == "pending"
    assert aliases(client, "reviewed") == {"challenger": "1"}
    assert client.get_model_version("reviewed", "1").tags["review.status"] == "pending"

    moved = record_review(client, "reviewed", "1", "approve", "looked at the misses", by="bob")
    assert moved is not None and (moved["action"], moved["override"]) == ("approve", False)
    assert aliases(client, "reviewed")["champion"] == "1"

    register_candidate(client, cfg, candidate(model_uri, 0.8, champion=0.6))
    assert record_review(client, "reviewed", "2", "reject", "wrong tool names", by="bob") is None
    tags = client.get_model_version("reviewed", "2").tags
    assert (tags["review.status"], tags["review.by"]) == ("rejected", "bob")
    assert tags["review.comment"] == "wrong tool names"
    assert tags["promotion"] == "rejected by bob: wrong tool names"
    assert aliases(client, "reviewed") == {"challenger": "2", "champion": "1"}


def test_ui_links_point_at_the_run_and_version_on_the_server(server: str, model_uri: str) -> None:
    import urllib.request

    from stillroom.registry import ui_links

    client, cfg = setup(server, "links-test")
    registration = register_candidate(client, cfg, candidate(model_uri, 0.9))
    links = ui_links(cfg, registration)
    experiment = client.get_experiment_by_name("registry-test").experiment_id
    run = f"{server}/#/experiments/{experiment}/runs/{registration.run_id}"
    assert links == {
        "MLflow run": run,
        "model version": f"{server}/#/models/links-test/versions/{registration.version}",
    }
    with urllib.request.urlopen(links["MLflow run"].split("#")[0]) as page:
        assert page.status == 200  # the UI that resolves the #/ route is served there
