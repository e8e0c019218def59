"""Targets: one YAML per narrow LLM call, describing its prompt, schema and metric.

For `tool_call` targets an answer is valid when it matches the target's output schema and
every call names a tool the document offered, with arguments that satisfy that tool's own
JSON-schema parameters. Validation returns reasons rather than raising, because rejected
answers are counted and kept, never dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import jsonschema
import yaml
from pydantic import BaseModel, ConfigDict, Field

from stillroom.config import resolve_path
from stillroom.pii import validate_kinds


class TargetInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    messages_field: str = Field("messages", description="Document field holding the messages.")
    tools_field: str = Field("tools", description="Document field holding OpenAI `tools`.")


class TargetMetric(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="Folder of the evaluate metric module, relative to the repo.")
    primary: str = Field("accuracy", description="Metric key that decides promotion.")


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    kind: Literal["tool_call", "extract", "classify"]
    prompt_version: str
    input: TargetInput = Field(default_factory=TargetInput)
    teacher_system_prompt: str
    student_system_prompt: str
    output_schema: dict[str, Any]
    metric: TargetMetric
    pii: list[str] = Field(
        default_factory=list,
        description="PII kinds scrubbed from messages before they reach the teacher.",
    )
    rationale: bool = Field(
        False, description="Keep the teacher's text alongside its answer as a rationale."
    )


def load_target(path: str | Path) -> Target:
    target = Target.model_validate(yaml.safe_load(resolve_path(str(path)).read_text()))
    jsonschema.Draft202012Validator.check_schema(target.output_schema)
    validate_kinds(target.pii)
    return target


def document_messages(target: Target, document: dict[str, Any]) -> list[dict[str, Any]]:
    return document[target.input.messages_field]


def document_tools(target: Target, document: dict[str, Any]) -> list[dict[str, Any]]:
    return document.get(target.input.tools_field) or []


def first_error(validator: jsonschema.protocols.Validator, instance: Any) -> str | None:
    """The most relevant schema error as one line, or None when the instance is valid."""
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "<root>"
    return f"{where}: {error.message}"[:300]


def validate_answer(target: Target, tools: list[dict[str, Any]], answer: Any) -> str | None:
    """Why `answer` is not a valid output for a document offering `tools`; None if valid."""
    problem = first_error(jsonschema.Draft202012Validator(target.output_schema), answer)
    if problem or target.kind != "tool_call":
        return problem
    offered = {t["function"]["name"]: t["function"].get("parameters", {}) for t in tools}
    for index, call in enumerate(answer["tool_calls"]):
        if call["name"] not in offered:
            return f"tool_calls/{index}: unknown tool {call['name']!r}"
        param_error = first_error(
            jsonschema.Draft202012Validator(offered[call["name"]]), call["arguments"]
        )
        if param_error:
            return f"tool_calls/{index} ({call['name']}): {param_error}"
    return None
