"""What the flows share: the run id of a flow run and where a run keeps local files."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path

from stillroom.env import state_dir


def flow_run_key() -> str:
    """This flow run's id for paths and cache keys: the same on every retry of the run, so
    a retried run finds its own persisted stages; sortable by when it was scheduled."""
    from prefect.runtime import flow_run

    scheduled = flow_run.scheduled_start_time
    return f"{scheduled.astimezone(UTC):%Y%m%dT%H%M%SZ}-{str(flow_run.id)[:8]}"


def run_dir(run_id: str) -> Path:
    """This machine's working folder for one run (dataset, downloaded models, report)."""
    return state_dir() / "runs" / run_id
