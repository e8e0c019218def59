"""Tool-call answers as text: the compact rendering the student learns, and its scoring rules.

The student is trained on `render_tool_calls` output and evaluated on whatever it generates,
so parsing is lenient about the text around the answer (chatter, code fences, trailing
repetition) but strict about the answer itself: a truncated or malformed list is invalid,
never repaired into a shorter answer that might happen to match.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

# An array element or object member starts after one of these, so an object found right after
# one is part of a larger value that failed to decode (a truncated list), not an answer itself.
_INSIDE_VALUE_MARKERS = ("[", ",")


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


def calls_match(predicted: list[dict[str, Any]], reference: list[dict[str, Any]]) -> bool:
    """Same calls with equal normalised arguments; parallel order is free, the count is not."""
    return Counter(map(call_key, predicted)) == Counter(map(call_key, reference))


def name_match(predicted: list[dict[str, Any]], reference: list[dict[str, Any]]) -> bool:
    """Same multiset of function names, whatever the arguments."""
    return Counter(call["name"] for call in predicted) == Counter(
        call["name"] for call in reference
    )


def judge_prediction(prediction: str, reference: str) -> dict[str, bool]:
    """Whether one generated text parses, calls the right functions, and matches exactly.

    Raises ValueError for a reference that is not a JSON list of calls: references are
    validated teacher answers, so a bad one is a pipeline bug, not a wrong prediction.
    """
    expected = parse_tool_calls_json(reference)
    if expected is None:
        raise ValueError(f"reference is not a JSON list of tool calls: {reference!r}")
    predicted = parse_tool_calls_text(prediction)
    if predicted is None:
        return {"valid": False, "name_match": False, "exact_match": False}
    return {
        "valid": True,
        "name_match": name_match(predicted, expected),
        "exact_match": calls_match(predicted, expected),
    }
