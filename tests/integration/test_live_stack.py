"""The local stack for real, as `make serve`, `make deploy` and `make stop` run it: a
`prefect server`, a process worker per pool, MLflow, moto S3 and the replay teacher, each
a detached process; the on-demand deployment triggered through the API on the smoke
profile runs on the cpu worker and registers a model version in the MLflow server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from stillroom import services, stack
from stillroom.env import project_root

MODEL = "bfcl-tool-call-student"


def run_cli(env: dict[str, str], command: str, timeout_s: float = 600) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "stillroom.stack", command],
        cwd=project_root(),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert result.returncode == 0, f"stack {command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A private state folder and free ports, so a user's own stack on 4200/5000 is safe."""
    env = os.environ.copy()
    env["STILLROOM_HOME"] = str(tmp_path_factory.mktemp("stack-home"))
    for var, _ in stack.PORTS.values():
        env[var] = str(services.free_port())
    return env


@pytest.fixture(scope="module")
def served(env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """`serve` in a process of its own that exits, as `make serve` does; `stop` always."""
    try:
        output = run_cli(env, "serve")
        state = json.loads((Path(env["STILLROOM_HOME"]) / "stack/stack.json").read_text())
        yield {"output": output, **state}
    finally:
        run_cli(env, "stop")


@pytest.fixture(scope="module")
def api(served: dict[str, Any]) -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = f"{served['urls']['prefect']}/api"
    with temporary_settings({PREFECT_API_URL: url}):
        yield url


def test_serve_outlives_its_shell_and_prints_every_address(served: dict[str, Any]) -> None:
    names = sorted(p["name"] for p in served["processes"])
    assert names == ["mlflow", "moto-s3", "prefect-server", "teacher", "worker-cpu", "worker-gpu"]
    assert all(stack.is_running(p["pid"], p["started"]) for p in served["processes"])
    assert all(p["pid"] == p["pgid"] for p in served["processes"])  # each its own group
    for url in served["urls"].values():
        assert url.startswith("http://127.0.0.1:") and url in served["output"]


def test_serve_again_says_so(env: dict[str, str], served: dict[str, Any]) -> None:
    assert "already serving (6 of 6 processes up)" in run_cli(env, "serve")


def test_deploy_registers_prefect_yaml_pointing_at_the_stack(
    env: dict[str, str], served: dict[str, Any], api: str
) -> None:
    from prefect.client.orchestration import get_client

    run_cli(env, "deploy")
    with get_client(sync_client=True) as client:
        on_demand = client.read_deployment_by_name("distill/on-demand")
        nightly = client.read_deployment_by_name("distill/nightly-retrain")
        trainer = client.read_deployment_by_name("train/gpu-train")
    overrides = on_demand.parameters["params"]["overrides"]
    assert overrides == stack.form_overrides(served["urls"])
    assert on_demand.work_pool_name == "cpu" and trainer.work_pool_name == "gpu"
    # Registered with its cron, but paused while a laptop serves.
    (schedule,) = nightly.schedules
    assert schedule.schedule.cron == "0 2 * * *" and schedule.active is False
    # The pull step's {{ $STILLROOM_CODE_DIR }} was resolved to this checkout.
    (step,) = on_demand.pull_steps
    assert step["prefect.deployments.steps.set_working_directory"] == {
        "directory": str(project_root())
    }


def read_logs(flow_run_id: Any) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    only_this_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    messages: list[str] = []
    with get_client(sync_client=True) as client:
        while page := client.read_logs(only_this_run, limit=200, offset=len(messages)):
            messages += [log.message for log in page]  # the server pages by 200 at most
    return messages


def test_on_demand_run_completes_with_a_registered_version(
    served: dict[str, Any], api: str
) -> None:
    from prefect.deployments import run_deployment

    run = run_deployment(
        "distill/on-demand",
        parameters={
            # MLflow and S3 are not named: the worker's environment points the run at them.
            "params": {"profile": "smoke", "overrides": stack.form_overrides(served["urls"])}
        },
        timeout=600,  # the smoke run takes 1-2 min on an idle 2-core machine
    )
    assert run.state is not None and run.state.is_completed(), run.state
    logs = read_logs(run.id)
    # The run logs its dataset's hash when it builds the splits; the version must carry it.
    hashed = [log for log in logs if "hash" in log or "Cached" in log]
    (prefix,) = {m.group(1) for log in hashed if (m := re.search(r"hash ([0-9a-f]{12})", log))}
    # Both URIs: MlflowClient's registry otherwise follows the process-wide default, which
    # earlier tests in this process may have pointed at their own stores.
    url = served["urls"]["mlflow"]
    mlflow = MlflowClient(tracking_uri=url, registry_uri=url)
    versions = mlflow.search_model_versions(f"name='{MODEL}'")
    found = [(v.version, v.tags.get("pipeline_run"), v.tags["dataset_hash"][:12]) for v in versions]
    assert [tag for _, _, tag in found] == [prefix], (run.name, found, hashed)
    assert "challenger" in mlflow.get_registered_model(MODEL).aliases


def test_stop_leaves_no_recorded_process(env: dict[str, str], served: dict[str, Any]) -> None:
    output = run_cli(env, "stop")
    assert all(f"{p['name']} ({p['pid']})" in output for p in served["processes"]), output
    assert not any(stack.is_running(p["pid"], p["started"]) for p in served["processes"])
    assert "nothing is running" in run_cli(env, "stop")
