"""Shared fixtures. Offline switches are set before any test module imports HF/Prefect."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault(
    "STILLROOM_HOME", str(Path(__file__).resolve().parent.parent / ".stillroom" / "test-home")
)

# Tests keep their MLflow stores to themselves, whatever the shell points MLflow at.
os.environ.pop("MLFLOW_TRACKING_URI", None)

from stillroom.env import apply_offline_env  # noqa: E402

apply_offline_env()


@pytest.fixture
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private state folder, so tests never see each other's MLflow store or models."""
    home = tmp_path / "home"
    monkeypatch.setenv("STILLROOM_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real moto S3 server over HTTP on 127.0.0.1, for the whole session."""
    from stillroom import services

    services.ensure_local_aws_credentials()
    with services.running(services.start_moto(tmp_path_factory.mktemp("moto"))) as server:
        yield server.url
