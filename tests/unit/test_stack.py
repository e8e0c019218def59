"""The local stack's bookkeeping without its servers: what `make deploy` changes in
prefect.yaml, and that `stop` signals exactly the processes it recorded."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from stillroom import stack
from stillroom.env import project_root

SPEC = yaml.safe_load((project_root() / "prefect.yaml").read_text())
URLS = {
    "s3": "http://127.0.0.1:9100",
    "teacher": "http://127.0.0.1:8766/v1",
    "mlflow": "http://127.0.0.1:5100",
}


def test_localised_spec_changes_only_service_addresses_and_pauses_schedules() -> None:
    overrides = stack.form_overrides(URLS)
    local = stack.localise(SPEC, overrides)
    on_demand = {d["name"]: d for d in local["deployments"]}["on-demand"]
    assert set(overrides) <= set(overrides_of(on_demand))
    forms = [d for d in local["deployments"] if "params" in (d.get("parameters") or {})]
    assert {d["name"] for d in forms} == {d["name"] for d in SPEC["deployments"]} - {"gpu-train"}
    assert all(set(overrides) <= set(overrides_of(d)) for d in forms)
    # MLflow and S3 come from the workers' environment, as on a deployed worker.
    assert not any(
        o.startswith(("registry.tracking_uri=", "storage.endpoint_url="))
        for d in forms
        for o in overrides_of(d)
    )
    nightly = {d["name"]: d for d in local["deployments"]}["nightly-retrain"]
    assert "training.deployment=train/gpu-train" in overrides_of(nightly)
    assert [s["active"] for s in nightly["schedules"]] == [False]
    # Everything else is prefect.yaml's: names, entrypoints, pools, profiles, cron, pull.
    for mine, theirs in zip(local["deployments"], SPEC["deployments"], strict=True):
        for key in ("name", "entrypoint", "work_pool", "tags", "description"):
            assert mine[key] == theirs[key]
        assert form(mine).get("profile") == form(theirs).get("profile")
        cron = [{k: v for k, v in s.items() if k != "active"} for s in mine.get("schedules", [])]
        assert cron == [
            {k: v for k, v in s.items() if k != "active"} for s in theirs.get("schedules", [])
        ]
    assert local["pull"] == SPEC["pull"]
    assert SPEC["deployments"][0]["schedules"][0]["active"] is True  # the input is untouched


def form(deployment: dict) -> dict:
    return (deployment.get("parameters") or {}).get("params") or {}


def overrides_of(deployment: dict) -> list[str]:
    return form(deployment).get("overrides", [])


def test_pools_are_the_ones_the_deployments_name() -> None:
    assert stack.pool_names() == ["cpu", "gpu"]


def stubborn(tmp_path: Path) -> subprocess.Popen[bytes]:
    """A detached process that ignores SIGTERM, as a Prefect worker may."""
    ready = tmp_path / "ready"
    code = (
        "import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"pathlib.Path({str(ready)!r}).touch(); time.sleep(120)"
    )
    process = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    while not ready.exists():
        time.sleep(0.05)
    return process


def write_state(processes: list[stack.Recorded]) -> None:
    stack.save_state({"processes": [p.__dict__ for p in processes], "urls": {}})


def recorded_from(process: subprocess.Popen[bytes], started: int | None = None) -> stack.Recorded:
    ticks = stack.start_ticks(process.pid) if started is None else started
    return stack.Recorded("stubborn", process.pid, process.pid, ticks, "", "")


def test_stop_escalates_to_sigkill_and_checks_the_pid_is_gone(
    state_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(stack, "STOP_GRACE_S", 0.5)
    process = stubborn(tmp_path)
    record = recorded_from(process)
    write_state([record])
    assert stack.stop() is True
    assert f"SIGKILL for what ignored SIGTERM for 0 s: pids [{process.pid}]" in (
        capsys.readouterr().out
    )
    assert not stack.is_running(record.pid, record.started)
    assert not stack.state_file().exists()
    assert stack.stop() is False  # nothing left: says so
    assert "nothing is running" in capsys.readouterr().out


def test_stop_leaves_a_reused_pid_alone(state_home: Path, tmp_path: Path) -> None:
    """A recorded PID whose start time differs is another process now: never signalled."""
    process = stubborn(tmp_path)
    try:
        write_state([recorded_from(process, started=1)])
        assert stack.stop() is False
        assert process.poll() is None
    finally:
        process.kill()
        process.wait()


def test_serve_when_serving_says_so_and_starts_nothing(
    state_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    process = stubborn(tmp_path)
    try:
        write_state([recorded_from(process)])
        monkeypatch.setattr(stack, "start_all", lambda *a: pytest.fail("started again"))
        stack.serve("smoke")
        assert "already serving" in capsys.readouterr().out
    finally:
        process.kill()
        process.wait()
