"""MLflow: log a candidate, register it, and move aliases by the promotion gate.

Every registered version gets the alias `challenger`. `champion` moves to it only when its
primary metric clears the configured floor and is no worse than the current champion's,
so a bad run can never displace a good model. Lineage (dataset hash, base model, teacher,
prompt version) is stored as version tags, where registry reviewers look.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from stillroom.config import RegistryConfig
from stillroom.env import state_dir

CHALLENGER = "challenger"
CHAMPION = "champion"
METRIC_TAG_PREFIX = "metric."


@dataclass
class Registration:
    name: str
    version: str
    run_id: str
    aliases: list[str]
    decision: str


def tracking_uri(cfg: RegistryConfig) -> str:
    if cfg.tracking_uri:
        return cfg.tracking_uri
    folder = state_dir() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def configure(cfg: RegistryConfig) -> MlflowClient:
    """Point MLflow at the store and make sure the experiment exists with local artifacts."""
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(cfg.experiment) is None:
        artifacts = state_dir() / "mlflow" / "artifacts" if not cfg.tracking_uri else None
        mlflow.create_experiment(
            cfg.experiment, artifact_location=artifacts.as_uri() if artifacts else None
        )
    mlflow.set_experiment(cfg.experiment)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def champion_metric(client: MlflowClient, name: str, metric: str) -> tuple[str, float] | None:
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    value = version.tags.get(METRIC_TAG_PREFIX + metric)
    return (version.version, float(value)) if value is not None else None


def promotion_decision(
    value: float, floor: float, champion: tuple[str, float] | None
) -> tuple[bool, str]:
    """Pure gate logic, kept apart from MLflow so it is tested on plain numbers."""
    if value < floor:
        return False, f"kept as challenger: {value:.3f} is below the floor {floor:.3f}"
    if champion and value < champion[1]:
        return False, (
            f"kept as challenger: {value:.3f} is worse than champion v{champion[0]} "
            f"({champion[1]:.3f})"
        )
    return True, f"promoted to champion: {value:.3f} clears the floor {floor:.3f}" + (
        f" and matches or beats v{champion[0]} ({champion[1]:.3f})" if champion else ""
    )


def log_student_model(model_dir: Path, settings: dict[str, Any], example: Any) -> Any:
    from stillroom.serving import StudentModel

    with tempfile.TemporaryDirectory() as tmp:
        settings_path = Path(tmp) / "settings.json"
        settings_path.write_text(json.dumps(settings))
        return mlflow.pyfunc.log_model(
            name="student",
            python_model=StudentModel(),
            artifacts={"model_dir": str(model_dir), "settings": str(settings_path)},
            signature=infer_signature(example, ["[]"]),
            # Explicit requirements: inference would import and probe the whole environment.
            pip_requirements=pinned_requirements(),
        )


def pinned_requirements() -> list[str]:
    from importlib.metadata import version

    packages = ("torch", "transformers", "peft", "mlflow", "pandas")
    return [f"{p}=={version(p).split('+')[0]}" for p in packages]


def register_candidate(
    client: MlflowClient,
    cfg: RegistryConfig,
    model_uri: str,
    primary: str,
    metrics: dict[str, float],
    tags: dict[str, str],
) -> Registration:
    version = mlflow.register_model(model_uri, cfg.model_name, tags=tags)
    client.set_model_version_tag(
        cfg.model_name, version.version, METRIC_TAG_PREFIX + primary, str(metrics[primary])
    )
    champion = champion_metric(client, cfg.model_name, primary)
    client.set_registered_model_alias(cfg.model_name, CHALLENGER, version.version)
    promote, decision = promotion_decision(metrics[primary], cfg.min_accuracy, champion)
    if promote:
        client.set_registered_model_alias(cfg.model_name, CHAMPION, version.version)
    client.set_model_version_tag(cfg.model_name, version.version, "promotion", decision)
    aliases = client.get_model_version(cfg.model_name, version.version).aliases
    return Registration(
        name=cfg.model_name,
        version=str(version.version),
        run_id=version.run_id,
        aliases=sorted(aliases),
        decision=decision,
    )
