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


# Deployments whose form starts from a profile and overrides (all but gpu-train).
FORMS = sorted(n for n, d in DEPLOYMENTS.items() if "params" in (d.get("parameters") or {}))
# Fields a form cannot have a default for: given by whoever starts the run.
PER_RUN = {"evaluate-and-promote": {"run_id": "20261204T020000Z-1a2b3c4d"}}
SERVICE_KEYS = {"registry.tracking_uri", "storage.endpoint_url"}


def test_every_flow_is_deployed() -> None:
    entrypoints = {d["entrypoint"] for d in DEPLOYMENTS.values()}
    assert entrypoints == {
        "flows/distill.py:distill",
        "flows/label.py:label",
        "flows/train.py:train",
        "flows/evaluate_and_promote.py:evaluate_and_promote",
        "flows/watch.py:watch",
    }


@pytest.mark.parametrize("name", FORMS)
def test_entrypoint_is_a_flow_that_accepts_the_parameters(name: str) -> None:
    deployment = DEPLOYMENTS[name]
    flow = load_flow(deployment["entrypoint"])
    params = deployment["parameters"]["params"] | PER_RUN.get(name, {})
    flow.validate_parameters({"params": params})  # raises on unknown or mistyped ones
    load_config(params["profile"], params.get("overrides"))  # the config they build is valid
    # Service addresses come from the workers' environment (infra/), not from the form.
    for override in params.get("overrides", []):
        assert override.split("=")[0] not in SERVICE_KEYS, override


def store_in_a_fresh_process(env: dict[str, str], then: str = "") -> str:
    import os
    import subprocess
    import sys

    code = (
        "import mlflow\n"
        "from stillroom.config import load_config\n"
        "from stillroom.registry import tracking_uri\n"
        f"{then}\n"
        "print(tracking_uri(load_config('demo').registry))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | env,
        capture_output=True,
        text=True,
        check=True,
        cwd=project_root(),
    )
    return out.stdout.strip().splitlines()[-1]


def test_the_workers_environment_names_the_mlflow_server() -> None:
    assert load_config("demo").registry.tracking_uri is None  # what the deployments run with
    # As infra/compose starts the workers, and so every flow run they launch:
    assert store_in_a_fresh_process({"MLFLOW_TRACKING_URI": "http://mlflow:5000"}) == (
        "http://mlflow:5000"
    )
    assert store_in_a_fresh_process({}).startswith("sqlite:///")
    # MLflow writes MLFLOW_TRACKING_URI itself when a store is chosen: that must not become
    # the next run's store.
    moved = "mlflow.set_tracking_uri('sqlite:////tmp/another-runs-store.db')"
    assert store_in_a_fresh_process({}, moved).startswith("sqlite:///")
    assert "another-runs-store" not in store_in_a_fresh_process({}, moved)


@pytest.mark.parametrize("entrypoint", sorted({d["entrypoint"] for d in DEPLOYMENTS.values()}))
def test_each_flow_takes_one_typed_parameters_model(entrypoint: str) -> None:
    # The UI form is generated from this schema: one object with the model's fields.
    schema = load_flow(entrypoint).parameters.model_dump()
    assert schema["required"] == ["params"] and list(schema["properties"]) == ["params"]
    (model,) = schema["definitions"].keys() - {"GateParams"}
    assert schema["properties"]["params"]["$ref"] == f"#/definitions/{model}"
    assert all(p.get("description") for p in schema["definitions"][model]["properties"].values())


def test_the_distill_form_has_the_settings_people_change() -> None:
    schema = load_flow("flows/distill.py:distill").parameters.model_dump()
    fields = schema["definitions"]["DistillParams"]["properties"]
    assert {"profile", "target", "sample_size", "teacher_model", "base_model", "gate"} <= set(
        fields
    )
    gate = schema["definitions"]["GateParams"]["properties"]
    assert set(gate) == {"min_accuracy", "min_margin", "max_latency_ms", "review"}


def test_a_misspelt_field_is_refused() -> None:
    flow = load_flow("flows/distill.py:distill")
    with pytest.raises(Exception, match="sample_sise"):
        flow.validate_parameters({"params": {"profile": "demo", "sample_sise": 10}})


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
    params = nightly["parameters"]["params"]
    cfg = load_config(params["profile"], params["overrides"])
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
    params = watch["parameters"]["params"]
    cfg = load_config(params["profile"], params.get("overrides"))
    flow_name, deployment_name = cfg.watch.deployment.split("/")
    assert load_flow(DEPLOYMENTS[deployment_name]["entrypoint"]).name == flow_name


@pytest.mark.parametrize("template", ["process", "infra/k8s/gpu-base-job-template.json"])
def test_job_variables_fit_the_gpu_pools_job_templates(template: str) -> None:
    import json

    import jsonschema
    from prefect.workers.process import ProcessWorker

    if template == "process":  # the compose GPU worker's pool
        base = ProcessWorker.get_default_base_job_template()
    else:
        base = json.loads((project_root() / template).read_text())
    variables = DEPLOYMENTS["gpu-train"]["work_pool"]["job_variables"]
    schema = {k: v for k, v in base["variables"].items() if k != "required"}
    jsonschema.validate(variables, schema)  # what the server checks when deploying
    assert set(variables) <= set(base["variables"]["properties"])


def test_train_form_takes_uris_only() -> None:
    from flows.train import TrainParams

    trainer = load_flow(DEPLOYMENTS["gpu-train"]["entrypoint"])
    params = TrainParams(run_id="r", dataset_uri="s3://b/d", output_uri="s3://b/o")
    trainer.validate_parameters({"params": params.model_dump()})


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


def test_no_flow_file_shadows_an_installed_module() -> None:
    """Prefect runs an entrypoint with its folder first on sys.path and the file registered
    under its own name: a `flows/evaluate.py` would stand in for Hugging Face `evaluate`."""
    import pkgutil
    import sys

    flows_dir = project_root() / "flows"
    ours = {project_root(), flows_dir}
    elsewhere = [p for p in sys.path if p and Path(p).resolve() not in ours]
    installed = {m.name for m in pkgutil.iter_modules(elsewhere)} | set(sys.stdlib_module_names)
    assert "evaluate" in installed  # the check sees the packages the flows import
    names = {path.stem for path in flows_dir.glob("*.py")} - {"__init__"}
    assert not names & installed
