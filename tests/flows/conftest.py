"""Each flow test module gets its own Prefect test server and its own state folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def home(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A module-wide STILLROOM_HOME: runs, MLflow store and models apart from other modules."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    mp.setenv("STILLROOM_HOME", str(path))
    yield path
    mp.undo()
