"""Tool-call answers as text: the compact rendering the student learns, and its scoring rules.

The student is trained on `render_tool_calls` output and evaluated on whatever it generates,
so parsing is lenient about the text around the answer (chatter, code fences, trailing
repetition) but strict about the answer itself: a truncated or malformed list is invalid,
never repaired into a shorter answer that might happen to match.

"No call" is the empty list `[]`, as a reference (the teacher called nothing) and as a
prediction alike; only `[]` matches it. Text without any JSON answer stays invalid rather than
reading as "no call", or every truncated generation would pass for one.

Families whose chat template renders tools (Qwen2.5) write calls as `<tool_call>` blocks
instead; `parse_tool_call_blocks` reads them leniently for the local teacher (which forwards
what the model wrote) and `parse_tool_call_blocks_text` strictly for a student's answer.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

# An array element or object member starts after one of these, so an object found right after
# one is part of a larger value that failed to decode (a truncated list), not an answer itself.
_INSIDE_VALUE_MARKERS = ("[", ",")

# Qwen's template asks for exactly this; `(.*?)` stops at the first close, and a block the
# token budget cut off (no close) still counts: it is passed on as malformed, not dropped.
TOOL_CALL_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
# Salvages name and raw arguments from a block whose JSON does not parse.
MALFORMED_CALL = re.compile(
    r'\A\s*\{\s*"name"\s*:\s*"(?P<name>(?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*'
    r"(?P<arguments>.*?)\s*\}?\s*\Z",
    re.DOTALL,
)


def render_tool_calls(calls: list[dict[str, Any]]) -> str:
    """The one training-target rendering: compact JSON, keys in the order name, arguments."""
    ordered = [{"name": call["name"], "arguments": call.get("arguments") or {}} for call in calls]
    return json.dumps(ordered, separators=(",", ":"), ensure_ascii=False)


def parse_tool_calls_text(text: str) -> list[dict[str, Any]] | None:
    """The calls in a generated text, or None when it holds no well-formed answer.

    The first JSON list or object in the text decides: a list must be a list of calls, an
    object must itself be a call (it is wrapped in a list). Text before and after it is
    ignored, so code fences and chatter are tolerated; values nested in it are never tried
    on their own, and neither is an object right after `[` or `,` (inside a list that failed
    to decode, e.g. a truncated one), so a lone object after "Sure, " is not accepted either.
    """
    decoder = json.JSONDecoder()
    for start, char in enumerate(text):
        if char not in "[{":
            continue
        if char == "{" and preceding_char(text, start) in _INSIDE_VALUE_MARKERS:
            continue
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        # Decoding from a bracket yields a list or an object, never a scalar.
        return validate_calls(value if isinstance(value, list) else [value])
    return None


def parse_tool_call_blocks(text: str) -> list[dict[str, Any]]:
    """Calls from `<tool_call>` blocks; a block whose JSON fails keeps its raw arguments text.

    Arguments come back as a dict when the block parses, else as the raw text (a string), so
    the teacher server forwards exactly what the model wrote and the client's validation
    decides. A block without a readable name gives the name "".
    """
    calls = []
    for match in TOOL_CALL_BLOCK.finditer(text):
        body = match.group(1).strip()
        try:
            value = json.loads(body)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            arguments = value.get("arguments")
            calls.append(
                {"name": value["name"], "arguments": {} if arguments is None else arguments}
            )
            continue
        salvaged = MALFORMED_CALL.match(body)
        if salvaged:
            calls.append({"name": salvaged["name"], "arguments": salvaged["arguments"]})
        else:
            calls.append({"name": "", "arguments": body})
    return calls


def parse_tool_call_blocks_text(text: str) -> list[dict[str, Any]] | None:
    """A tools-template student's answer: its `<tool_call>` blocks, or None if one is bad.

    Every block must be a well-formed call: one cut off by the token budget, or with
    arguments that are not an object, makes the whole answer invalid, as a truncated list
    does in `parse_tool_calls_text`. Without any block the text is read as the compact
    family's answer, so "no call" is a plain `[]` (see `prompts.render_completion`), and
    prose or nothing at all stays invalid rather than passing for "no call".
    """
    blocks = parse_tool_call_blocks(text)
    if not blocks:
        return parse_tool_calls_text(text)
    return validate_calls(blocks)


def parse_tool_calls_json(text: str) -> list[dict[str, Any]] | None:
    """The calls in a text that must be exactly one JSON list of calls (a reference answer)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return validate_calls(value) if isinstance(value, list) else None


def validate_calls(items: list[Any]) -> list[dict[str, Any]] | None:
    """Items as `{"name", "arguments"}` calls, or None if any item is not a call.

    A missing or null `arguments` means no arguments, as it does for the teacher's own
    answers (see `teacher.parse_tool_calls`); arguments of any other non-object type, or a
    name that is not a non-empty string, make the whole answer invalid. Other keys are dropped.
    """
    calls = []
    for item in items:
        if not isinstance(item, dict):
            return None
        name = item.get("name")
        arguments = item.get("arguments")
        if arguments is None:
            arguments = {}
        if not isinstance(name, str) or not name or not isinstance(arguments, dict):
            return None
        calls.append({"name": name, "arguments": arguments})
    return calls


def preceding_char(text: str, index: int) -> str:
    """The last non-whitespace character before `index`, or "" at the start of the text."""
    before = text[:index].rstrip()
    return before[-1] if before else ""


def normalize_value(value: Any) -> Any:
    """An argument value in the form used for comparison.

    Numbers compare by value (5 == 5.0) but booleans stay booleans (True != 1); strings ignore
    surrounding whitespace and case; lists keep their order; dict keys (parameter names) are
    kept exactly and only their values are normalised.
    """
    # Integral floats become ints rather than ints floats: big ints stay exact, and bool (an
    # int subclass) passes through untouched. Keys built from this still need JSON to keep
    # True and 1 apart, see `call_key`.
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, str):
        return value.strip().casefold()
    if isinstance(value, list | tuple):
        return [normalize_value(item) for item in value]
    if isinstance(value, dict):
        return {key: normalize_value(item) for key, item in value.items()}
    return value


def call_key(call: dict[str, Any]) -> tuple[str, str]:
    """A hashable form of one call; JSON keeps True and 1 apart, which Python equality doesn't."""
    arguments = normalize_value(call.get("arguments") or {})
    return call["name"], json.dumps(arguments, sort_keys=True, ensure_ascii=False)


def calls_match(
    predicted: list[dict[str, Any]],
    reference: list[dict[str, Any]],
    defaults: dict[str, dict[str, str]] | None = None,
) -> bool:
    """Same calls with equal normalised arguments; parallel order is free, the count is not.

    With `defaults` (see `optional_defaults`), an optional argument set to its schema default
    counts the same as one left out, on either side.
    """
    if defaults:
        predicted = [drop_default_arguments(call, defaults) for call in predicted]
        reference = [drop_default_arguments(call, defaults) for call in reference]
    return Counter(map(call_key, predicted)) == Counter(map(call_key, reference))


def value_key(value: Any) -> str:
    """A normalised value as JSON, so True and 1 stay apart (see `call_key`)."""
    return json.dumps(normalize_value(value), sort_keys=True, ensure_ascii=False)


def parse_tools(tools: str | list[Any] | None) -> list[dict[str, Any]]:
    """One row's tool schemas, given as a JSON string or a list of tools (objects or JSON).

    Raises ValueError when they don't parse: like references, they come from the pipeline,
    so a bad one is a bug to surface, not something to score around.
    """
    if tools is None:
        return []
    try:
        items = json.loads(tools) if isinstance(tools, str) else tools
        if isinstance(items, dict):  # a single tool
            items = [items]
        parsed = [json.loads(item) if isinstance(item, str) else item for item in items]
    except (json.JSONDecodeError, TypeError):
        parsed = None
    if not isinstance(parsed, list) or not all(isinstance(tool, dict) for tool in parsed):
        raise ValueError(f"tools are not a list of tool schemas: {tools!r:.200}")
    return parsed


def optional_defaults(tools: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Per tool name, the `value_key` of each optional parameter's schema `default`.

    Only parameters outside `required` count: a required argument left out is a wrong call
    whatever its schema says. Takes OpenAI tools (`{"type": "function", "function": {...}}`)
    or bare function schemas; only top-level parameters are looked at.
    """
    defaults = {}
    for tool in tools:
        function = tool.get("function", tool)
        parameters = function.get("parameters") or {}
        required = set(parameters.get("required") or [])
        defaults[function.get("name")] = {
            name: value_key(spec["default"])
            for name, spec in (parameters.get("properties") or {}).items()
            if isinstance(spec, dict) and "default" in spec and name not in required
        }
    return defaults


def drop_default_arguments(
    call: dict[str, Any], defaults: dict[str, dict[str, str]]
) -> dict[str, Any]:
    """The call without the optional arguments that merely restate their schema default."""
    tool_defaults = defaults.get(call["name"]) or {}
    arguments = {
        name: value
        for name, value in (call.get("arguments") or {}).items()
        if name not in tool_defaults or value_key(value) != tool_defaults[name]
    }
    return {"name": call["name"], "arguments": arguments}


def name_match(predicted: list[dict[str, Any]], reference: list[dict[str, Any]]) -> bool:
    """Same multiset of function names, whatever the arguments."""
    return Counter(call["name"] for call in predicted) == Counter(
        call["name"] for call in reference
    )


def judge_prediction(
    prediction: str, reference: str, tools: str | list[Any] | None = None
) -> dict[str, bool]:
    """Whether one generated text parses, calls the right functions, and matches exactly.

    `tools` are the row's tool schemas (see `parse_tools`); with them, optional arguments at
    their schema default may be left out or spelled out (see `calls_match`). Raises
    ValueError for a reference that is not a JSON list of calls: references are validated
    teacher answers, so a bad one is a pipeline bug, not a wrong prediction.
    """
    expected = parse_tool_calls_json(reference)
    if expected is None:
        raise ValueError(f"reference is not a JSON list of tool calls: {reference!r}")
    defaults = optional_defaults(parse_tools(tools))
    predicted = parse_tool_calls_text(prediction)
    if predicted is None:
        return {"valid": False, "name_match": False, "exact_match": False}
    return {
        "valid": True,
        "name_match": name_match(predicted, expected),
        "exact_match": calls_match(predicted, expected, defaults),
    }
