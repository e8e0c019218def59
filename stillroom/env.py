"""Process environment: offline switches and the one state folder.

Every entry point (flows, the CLI, the trainer subprocess, tests) calls `apply_offline_env`
first; without it the Hugging Face, Prefect and MLflow libraries try the network on import
or first use and stall on a machine that has none.
"""

from __future__ import annotations

import os
from pathlib import Path

# setdefault semantics: an operator who exports HF_HUB_OFFLINE=0 on purpose keeps it.
OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "TOKENIZERS_PARALLELISM": "false",
    # Keeps `accelerate launch` from asking for a config interactively or phoning home.
    "ACCELERATE_DISABLE_RICH": "1",
    # The library logs through `logging` (it never imports Prefect); this routes those
    # lines (labelling progress, budget stops) into the Prefect run's logs and UI.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "stillroom",
    # ... and outside a flow run (the `stillroom label` command) they stay local, quietly.
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}


def project_root() -> Path:
    """The repository root (where `configs/` and `infra/` live)."""
    return Path(__file__).resolve().parent.parent


def state_dir() -> Path:
    """The one ignored folder that holds all local state; `make clean` removes it."""
    path = Path(os.environ.get("STILLROOM_HOME", project_root() / ".stillroom"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def apply_offline_env() -> None:
    """Set the offline/telemetry switches and point library caches into the state folder."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    home = state_dir()
    os.environ.setdefault("HF_HOME", str(home / "hf"))
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
