"""The one rendering of a request (messages + tools) into student text, and back.

Training (`render_example`), evaluation and serving (`render_row_prompt`, `parse_completion`)
all go through this module, so the student always sees the exact format it was trained on.
The format comes from the tokenizer's chat template, in one of two families:

- A template that renders `tools` (Qwen2.5's): the request's full OpenAI schemas go where the
  template puts them, and the answer is the assistant turn the template writes for
  `tool_calls` (Qwen: `<tool_call>` blocks closed by `<|im_end|>`), read back by
  `toolcalls.parse_tool_call_blocks_text`.
- Any other template (SmolLM2's ChatML): tools go into our system prompt as compact signatures
  (a BFCL request with full JSON schemas is ~600 tokens, the signatures ~150, and on a 2-core
  CPU training throughput is counted in tokens), and the answer is the compact JSON list of
  `toolcalls.render_tool_calls` closed by the eos token, read back by `parse_tool_calls_text`.

"No call" is `[]` in both: for a tools template the assistant turn's plain content is `[]`
(no block), because an empty turn or prose would be indistinguishable from a student that
wrote nothing useful; malformed or truncated blocks stay invalid, never "no call".

Dataset rows stay model-agnostic (`answer` is always the compact JSON): the family's format
is made here, and generations are turned back into that compact JSON (`canonical_answer`)
before a metric sees them, so metric modules never need to know the family.
"""

from __future__ import annotations

import json
from typing import Any

from stillroom.toolcalls import (
    parse_tool_call_blocks_text,
    parse_tool_calls_json,
    parse_tool_calls_text,
    render_tool_calls,
)

DESCRIPTION_CHARS = 60  # a clause tells similar tools apart; every further token costs CPU time
# What a generation that is no answer at all becomes for the metric: it parses as invalid.
INVALID_ANSWER = ""
# Rendered with the probe request to see whether a template writes tool schemas at all: a name
# no real prompt contains, so finding it in the text can only mean the template put it there.
PROBE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "stillroom_template_probe",
        "description": "Never called.",
        "parameters": {"type": "object", "properties": {}},
    },
}
PROBE_MESSAGES = [{"role": "system", "content": "probe"}, {"role": "user", "content": "probe"}]
# The request an answer is rendered after when there is no real one (generation budgets).
MINIMAL_REQUEST = [{"role": "user", "content": ""}]


# --- the family ---------------------------------------------------------------------------


def supports_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders `tools` (then it decides where they go).

    Probed by rendering rather than by looking for the word `tools` in the template's source:
    a template may mention tools in its text, or read the variable only to reject it.
    """
    text = tokenizer.apply_chat_template(
        PROBE_MESSAGES, tools=[PROBE_TOOL], tokenize=False, add_generation_prompt=True
    )
    return PROBE_TOOL["function"]["name"] in text


# --- compact signatures (templates without tools support) ----------------------------------


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


# --- messages -------------------------------------------------------------------------------


def request_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The request's own turns; its system prompt is replaced by ours, never stacked on it."""
    return [{"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "system"]


def prompt_messages(
    system_prompt: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> list[dict[str, str]]:
    """Chat messages for a template without tools support: signatures in our system turn."""
    system = {"role": "system", "content": render_system(system_prompt, tools)}
    return [system, *request_messages(messages)]


def tools_messages(system_prompt: str, messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Chat messages for a tools template: our system prompt alone, the template adds tools."""
    return [{"role": "system", "content": system_prompt}, *request_messages(messages)]


def assistant_turn(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The answer as a chat message; "no call" is the plain content `[]` (see module doc)."""
    if not calls:
        return {"role": "assistant", "content": render_tool_calls([])}
    tool_calls = [
        # Arguments as an object: templates `tojson` them, a JSON string would be quoted twice.
        {"type": "function", "function": {"name": c["name"], "arguments": c.get("arguments") or {}}}
        for c in calls
    ]
    return {"role": "assistant", "content": "", "tool_calls": tool_calls}


# --- rendering ------------------------------------------------------------------------------


def render_prompt(
    tokenizer: Any, system_prompt: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> str:
    """Prompt text up to and including the assistant header the answer follows."""
    if supports_tools(tokenizer):
        return tokenizer.apply_chat_template(
            tools_messages(system_prompt, messages),
            tools=tools or None,
            tokenize=False,
            add_generation_prompt=True,
        )
    return tokenizer.apply_chat_template(
        prompt_messages(system_prompt, messages, tools), tokenize=False, add_generation_prompt=True
    )


def render_completion(
    tokenizer: Any,
    system_prompt: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    calls: list[dict[str, Any]],
) -> str:
    """The answer the student learns for this request, closed by the end-of-turn token."""
    prompt = render_prompt(tokenizer, system_prompt, messages, tools)
    return completion_after(tokenizer, prompt, system_prompt, messages, tools, calls)


def completion_after(
    tokenizer: Any,
    prompt: str,
    system_prompt: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    calls: list[dict[str, Any]],
) -> str:
    """The answer that follows `prompt` (this request's `render_prompt`).

    For a tools template it is the template's own assistant turn: the whole chat rendered,
    minus the prompt. Raises ValueError when that format is one this module cannot use: a
    prompt the answer does not follow verbatim (training would see a context inference never
    shows), or calls that do not read back as written (the student could never be scored).
    """
    if not supports_tools(tokenizer):
        return render_tool_calls(calls) + tokenizer.eos_token
    conversation = [*tools_messages(system_prompt, messages), assistant_turn(calls)]
    full = tokenizer.apply_chat_template(conversation, tools=tools or None, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template renders a different prompt once the answer follows")
    completion = through_end_of_turn(full[len(prompt) :], tokenizer.eos_token)
    generated = completion.removesuffix(tokenizer.eos_token)  # what decoding hands back
    if parse_tool_call_blocks_text(generated) != answer_calls(calls):
        raise ValueError(f"the chat template writes tool calls as {generated!r:.200}: unreadable")
    return completion


def through_end_of_turn(text: str, eos_token: str) -> str:
    """`text` up to and including its last end-of-turn token.

    What templates write after it (Qwen: a newline) is never generated, as generation stops
    at eos; training on it would only teach tokens the student is never asked for.
    """
    head, eos, _ = text.rpartition(eos_token)
    return head + eos if eos else text


def answer_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Calls in the form the parsers return them: name and arguments only, arguments a dict."""
    return [{"name": c["name"], "arguments": c.get("arguments") or {}} for c in calls]


def row_request(row: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A dataset (or serving) row's messages and tools, stored as JSON strings."""
    return json.loads(row["messages"]), json.loads(row["tools"])


def render_row_prompt(tokenizer: Any, system_prompt: str, row: dict[str, Any]) -> str:
    """The prompt for a dataset or serving row: what evaluation and serving generate from."""
    messages, tools = row_request(row)
    return render_prompt(tokenizer, system_prompt, messages, tools)


def render_example(tokenizer: Any, system_prompt: str, row: dict[str, Any]) -> tuple[str, str]:
    """(prompt, completion) for a dataset row: what training learns from.

    The prompt is `render_row_prompt`'s, so training and inference cannot drift apart.
    Raises ValueError for an `answer` that is not a JSON list of calls: rows are validated
    teacher answers, so a bad one is a pipeline bug.
    """
    messages, tools = row_request(row)
    calls = parse_tool_calls_json(row["answer"])
    if calls is None:
        raise ValueError(f"row answer is not a JSON list of tool calls: {row['answer']!r:.200}")
    prompt = render_prompt(tokenizer, system_prompt, messages, tools)
    return prompt, completion_after(tokenizer, prompt, system_prompt, messages, tools, calls)


def render_answer(tokenizer: Any, calls: list[dict[str, Any]]) -> str:
    """What the student writes for `calls`, without the end-of-turn token.

    Rendered after a minimal request: the answer's text does not depend on the request in
    either family, and a generation budget only needs its length.
    """
    completion = render_completion(tokenizer, "", MINIMAL_REQUEST, [], calls)
    return completion.removesuffix(tokenizer.eos_token)


# --- reading generations back ---------------------------------------------------------------


def parse_completion(tokenizer: Any, text: str) -> list[dict[str, Any]] | None:
    """The calls in a generated text, read the family's way; None when it is no answer."""
    if supports_tools(tokenizer):
        return parse_tool_call_blocks_text(text)
    return parse_tool_calls_text(text)


def canonical_answer(tokenizer: Any, text: str) -> str:
    """A generation as the compact JSON metrics read (`INVALID_ANSWER` when it is none)."""
    calls = parse_completion(tokenizer, text)
    return INVALID_ANSWER if calls is None else render_tool_calls(calls)
