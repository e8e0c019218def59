"""prefect.yaml: every deployment points at a real flow, with parameters that flow accepts,
on a work pool the infra runs, and with schedules Prefect can parse."""

import re
from pathlib import Path

import pytest
import yaml
from prefect.client.schemas.schedules import CronSchedule

from stillroom.config import load_config
from stillroom.env import project_root

SPEC = yaml.safe_load((project_root() / "prefect.yaml").read_text())
DEPLOYMENTS = {d["name"]: d for d in SPEC["deployments"]}


def load_flow(entrypoint: str):
    from prefect.flows import load_flow_from_entrypoint

    path, name = entrypoint.split(":")
    return load_flow_from_entrypoint(f"{project_root() / path}:{name}")


# Deployments of flows that take a profile and overrides (distill, watch).
PROFILED = sorted(n for n, d in DEPLOYMENTS.items() if "profile" in d.get("parameters", {}))


def test_every_flow_is_deployed() -> None:
    entrypoints = {d["entrypoint"] for d in DEPLOYMENTS.values()}
    assert entrypoints == {
        "flows/distill.py:distill",
        "flows/train.py:train",
        "flows/watch.py:watch",
    }


@pytest.mark.parametrize("name", PROFILED)
def test_entrypoint_is_a_flow_that_accepts_the_parameters(name: str) -> None:
    deployment = DEPLOYMENTS[name]
    flow = load_flow(deployment["entrypoint"])
    flow.validate_parameters(deployment["parameters"])  # raises on unknown or mistyped ones
    params = deployment["parameters"]
    cfg = load_config(params["profile"], params["overrides"])  # the config they build is valid
    assert cfg.registry.tracking_uri == "http://mlflow:5000"


def test_pools_are_the_ones_the_infra_runs() -> None:
    compose = yaml.safe_load((project_root() / "infra/compose/docker-compose.yml").read_text())
    commands = " ".join(
        " ".join(s.get("command") or [])
        if isinstance(s.get("command"), list)
        else str(s.get("command"))
        for s in compose["services"].values()
    )
    for deployment in DEPLOYMENTS.values():
        assert f"--pool {deployment['work_pool']['name']}" in commands


def test_nightly_schedule_parses_and_trains_on_the_gpu_pool() -> None:
    nightly = DEPLOYMENTS["nightly-retrain"]
    (schedule,) = nightly["schedules"]
    CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
    cfg = load_config(nightly["parameters"]["profile"], nightly["parameters"]["overrides"])
    assert cfg.profile == "gpu" and nightly["work_pool"]["name"] == "cpu"
    # Training goes to a deployment of the train flow that sits on the gpu pool.
    flow_name, deployment_name = cfg.training.deployment.split("/")
    trainer = DEPLOYMENTS[deployment_name]
    assert trainer["work_pool"]["name"] == "gpu"
    assert load_flow(trainer["entrypoint"]).name == flow_name


def test_watch_runs_on_a_schedule_and_triggers_an_existing_deployment() -> None:
    watch = DEPLOYMENTS["drift-watch"]
    (schedule,) = watch["schedules"]
    CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
    cfg = load_config(watch["parameters"]["profile"], watch["parameters"]["overrides"])
    flow_name, deployment_name = cfg.watch.deployment.split("/")
    assert load_flow(DEPLOYMENTS[deployment_name]["entrypoint"]).name == flow_name


def test_train_deployment_takes_one_typed_parameters_model() -> None:
    from flows.train import TrainParams

    trainer = load_flow(DEPLOYMENTS["gpu-train"]["entrypoint"])
    params = TrainParams(run_id="r", dataset_uri="s3://b/d", output_uri="s3://b/o")
    trainer.validate_parameters({"params": params.model_dump()})
    # The UI form is generated from this schema: one object with the model's fields.
    schema = trainer.parameters.model_dump()
    assert schema["required"] == ["params"]


def test_code_is_pulled_from_where_the_images_put_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.utilities.templating import apply_values

    (step,) = SPEC["pull"]
    directory = step["prefect.deployments.steps.set_working_directory"]["directory"]
    # One env var names the checkout: /app in the images, the repo root for `make deploy`.
    assert directory == "{{ $STILLROOM_CODE_DIR }}"
    for image in ("cpu", "gpu"):
        dockerfile = (project_root() / f"infra/docker/Dockerfile.{image}").read_text()
        (workdir,) = re.findall(r"^WORKDIR (\S+)", dockerfile, re.M)
        assert re.findall(r"\bSTILLROOM_CODE_DIR=(\S+)", dockerfile) == [workdir]
        # `prefect deploy --all` inside a worker container reads the file from there.
        assert any(
            line.startswith("COPY ") and "prefect.yaml" in line.split()
            for line in dockerfile.splitlines()
        )
    # Prefect's own templating (what `prefect deploy` and the pull step run) resolves it.
    monkeypatch.setenv("STILLROOM_CODE_DIR", "/app")
    assert apply_values(SPEC["pull"], {}) == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "/app"}}
    ]
    assert Path(project_root() / "flows/distill.py").exists()
