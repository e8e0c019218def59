"""The parameters of the flows, one typed model each, so the Prefect UI renders a form.

A form holds the settings people change when they start a run by hand (profile, target,
sample size, teacher, base model, the promotion gate); anything else is a dotted override.
The typed fields become dotted overrides themselves (`config_overrides`), placed before the
free-form ones so that an explicit override still has the last word. Only names and
addresses appear here: the teacher's key stays in the environment variable the config names.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from stillroom.config import PipelineConfig, load_config


class Form(BaseModel):
    # A misspelt field in a deployment's parameters is an error, not a silently unused value.
    model_config = ConfigDict(extra="forbid")


class Profiled(Form):
    """A config profile, the form's typed settings, then free-form dotted overrides."""

    profile: str = Field("demo", description="A profile in configs/profiles/ (demo, gpu, smoke).")
    overrides: list[str] = Field(
        default_factory=list,
        description="Dotted config overrides applied last, e.g. training.max_steps=50.",
    )

    def typed_fields(self) -> dict[str, object]:
        """Dotted config key -> the form's value for it (None: keep the profile's)."""
        return {}

    def config_overrides(self) -> list[str]:
        """The form as dotted overrides: typed fields first, free-form ones after them."""
        fields = self.typed_fields().items()
        # JSON is YAML, so each value reads back with the type it has here.
        typed = [f"{key}={json.dumps(value)}" for key, value in fields if value is not None]
        return typed + list(self.overrides)

    def load(self) -> PipelineConfig:
        return load_config(self.profile, self.config_overrides())


class GateParams(Form):
    """Promotion gate; a field left empty keeps the profile's value (registry.*)."""

    min_accuracy: float | None = Field(
        None, ge=0, le=1, description="The candidate's primary metric must reach this."
    )
    min_margin: float | None = Field(
        None, description="Gain over the champion, both scored on this run's test set."
    )
    max_latency_ms: float | None = Field(
        None, gt=0, description="p95 latency per request must not exceed this."
    )
    review: Literal["auto", "manual"] | None = Field(
        None, description="manual: a person approves the candidate in the Prefect UI."
    )


class RunParams(Profiled):
    """A config profile plus the settings most often changed for one run."""

    target: str | None = Field(
        None, description="Task definition, e.g. configs/targets/bfcl_tool_call.yaml."
    )
    sample_size: int | None = Field(None, ge=1, description="Documents drawn for labelling.")
    teacher_model: str | None = Field(None, description="Teacher model name sent to the API.")
    teacher_base_url: str | None = Field(
        None, description="OpenAI-compatible endpoint of the teacher, ending in /v1."
    )
    base_model: str | None = Field(
        None,
        description="Student base: smollm2-135m, qwen2.5-coder-0.5b, a cached hub id or a folder.",
    )
    gate: GateParams = Field(
        default_factory=GateParams, description="Promotion gate; empty fields keep the profile's."
    )

    def typed_fields(self) -> dict[str, object]:
        return {
            "target": self.target,
            "sampling.size": self.sample_size,
            "teacher.model": self.teacher_model,
            "teacher.base_url": self.teacher_base_url,
            "student.base_model": self.base_model,
            **{f"registry.{key}": value for key, value in self.gate.model_dump().items()},
        }


class DistillParams(RunParams):
    """One distillation run, end to end."""

    run_id: str | None = Field(
        None,
        description="Continue an earlier run: its sample, labels and dataset are reused. "
        "Empty: a new run id from this flow run.",
    )


class LabelParams(DistillParams):
    """Sample, label and build the dataset of a run (the data half of distill)."""


class EvaluateParams(RunParams):
    """Evaluate a run's trained student, register it and apply the gate."""

    run_id: str = Field(
        description="The run whose dataset and labels (runs/<run_id>/ in S3) to use."
    )
    training_uri: str | None = Field(
        None,
        description="s3:// prefix the train stage wrote to (metrics.json, merged/); "
        "empty: runs/<run_id>/training.",
    )


class WatchParams(Profiled):
    """One drift watch: how many recent requests to label and the agreement to hold."""

    sample_size: int | None = Field(None, ge=1, description="Recent requests labelled and scored.")
    min_agreement: float | None = Field(
        None, ge=0, le=1, description="Below this the watch starts a distill run."
    )

    def typed_fields(self) -> dict[str, object]:
        return {"watch.size": self.sample_size, "watch.min_agreement": self.min_agreement}
