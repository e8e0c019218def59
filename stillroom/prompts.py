"""The one rendering of a request (messages + tools) into student text.

Training, evaluation and serving all call `render_prompt` / `render_completion`, so the
student always sees the exact format it was trained on. SmolLM2's chat template has no
`tools` support, so tools go into the system prompt as compact signatures: a BFCL request
with full JSON schemas is ~600 tokens, the signatures ~150, and on a 2-core CPU training
throughput is counted in tokens.
"""

from __future__ import annotations

from typing import Any

from stillroom.toolcalls import render_tool_calls

DESCRIPTION_CHARS = 60  # a clause tells similar tools apart; every further token costs CPU time


def schema_type(schema: dict[str, Any]) -> str:
    """`integer`, `array[string]`, `string{a|b}` (enums are worth their tokens: exact values)."""
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        kind = "|".join(str(k) for k in kind)
    if kind == "array" and isinstance(schema.get("items"), dict):
        return f"array[{schema_type(schema['items'])}]"
    if "enum" in schema:
        return f"{kind}{{{'|'.join(str(v) for v in schema['enum'])}}}"
    return str(kind)


def short_description(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= DESCRIPTION_CHARS else text[: DESCRIPTION_CHARS - 3] + "..."


def render_signature(tool: dict[str, Any]) -> str:
    """`name(a: integer, b?: string) - description`; `?` marks optional arguments."""
    function = tool["function"]
    parameters = function.get("parameters") or {}
    required = set(parameters.get("required") or [])
    arguments = ", ".join(
        f"{name}{'' if name in required else '?'}: {schema_type(schema)}"
        for name, schema in (parameters.get("properties") or {}).items()
    )
    description = short_description(function.get("description", ""))
    return f"{function['name']}({arguments}) - {description}".rstrip(" -")


def render_system(system_prompt: str, tools: list[dict[str, Any]]) -> str:
    signatures = "\n".join(render_signature(t) for t in tools)
    return f"{system_prompt}\nFunctions:\n{signatures}"


def prompt_messages(
    system_prompt: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> list[dict[str, str]]:
    """Chat messages for the student: our system prompt first, the request's own after."""
    own = [{"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "system"]
    return [{"role": "system", "content": render_system(system_prompt, tools)}, *own]


def render_prompt(
    tokenizer: Any, system_prompt: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> str:
    """Prompt text up to and including the assistant header the answer follows."""
    return tokenizer.apply_chat_template(
        prompt_messages(system_prompt, messages, tools), tokenize=False, add_generation_prompt=True
    )


def render_completion(tokenizer: Any, output: dict[str, Any]) -> str:
    """The answer the student learns: compact JSON calls, closed by the end-of-turn token."""
    return render_tool_calls(output["tool_calls"]) + tokenizer.eos_token
