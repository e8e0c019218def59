"""Pure parts of labelling: request shapes, answer checks, repair, cost, progress lines."""

import json
import logging

import httpx
import openai
import pytest

from stillroom.config import Price, TeacherConfig
from stillroom.targets import load_target
from stillroom.teacher import (
    RATIONALE_INSTRUCTION,
    LabelResult,
    Progress,
    cache_key,
    check_answer,
    repair_request,
    retry_after_s,
    teacher_request,
)

TARGET = load_target("configs/targets/bfcl_tool_call.yaml")
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]


def tool_message(name: str, arguments: str) -> dict:
    call = {"id": "call_x", "type": "function", "function": {"name": name, "arguments": arguments}}
    return {"role": "assistant", "tool_calls": [call]}


def test_tool_call_targets_force_a_tool_call() -> None:
    request = teacher_request(TARGET, MESSAGES, TOOLS, TeacherConfig())
    assert request["tool_choice"] == "required" and request["tools"] == TOOLS
    assert request["messages"][0]["role"] == "system" and request["messages"][1:] == MESSAGES
    assert "response_format" not in request


def test_a_rationale_target_asks_for_the_reasoning() -> None:
    plain = teacher_request(TARGET, MESSAGES, TOOLS, TeacherConfig())
    with_rationale = TARGET.model_copy(update={"rationale": True})
    asked = teacher_request(with_rationale, MESSAGES, TOOLS, TeacherConfig())
    assert asked["messages"][0]["content"].endswith(RATIONALE_INSTRUCTION)
    assert RATIONALE_INSTRUCTION not in plain["messages"][0]["content"]
    assert cache_key(with_rationale, asked) != cache_key(TARGET, plain)


def test_other_targets_ask_for_json_schema_structured_output() -> None:
    extract = TARGET.model_copy(update={"kind": "extract", "name": "invoice"})
    request = teacher_request(extract, MESSAGES, [], TeacherConfig())
    spec = request["response_format"]
    assert spec["type"] == "json_schema" and spec["json_schema"]["schema"] == TARGET.output_schema
    assert "tools" not in request


def test_cache_key_changes_with_anything_that_changes_the_answer() -> None:
    base = teacher_request(TARGET, MESSAGES, TOOLS, TeacherConfig())
    key = cache_key(TARGET, base)
    assert key == cache_key(TARGET, dict(base))
    assert key != cache_key(TARGET, base | {"temperature": 0.7})
    assert key != cache_key(TARGET.model_copy(update={"prompt_version": "v2"}), base)
    assert cache_key(TARGET, base | {"model": "other"}).startswith("teacher-cache/other/")


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (tool_message("get_weather", '{"city": "Paris"}'), None),
        (tool_message("get_weather", '{"city": "Par'), "arguments_not_json"),
        (tool_message("get_weather", '{"city": 3}'), "schema_invalid"),
        (tool_message("launch_rocket", "{}"), "schema_invalid"),
        ({"role": "assistant", "content": "It is sunny."}, "no_tool_call"),
    ],
)
def test_answers_are_checked_against_schema_and_tool_parameters(message, reason) -> None:
    output, problem = check_answer(TARGET, TOOLS, message)
    if reason is None:
        assert problem is None and output == {
            "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]
        }
    else:
        assert output is None and problem.startswith(reason)


def test_repair_shows_the_bad_answer_without_call_ids() -> None:
    request = teacher_request(TARGET, MESSAGES, TOOLS, TeacherConfig())
    first = repair_request(request, tool_message("get_weather", "{"), "arguments_not_json")
    again = repair_request(
        request, tool_message("get_weather", "{") | {"id": "other"}, "arguments_not_json"
    )
    assert first == again  # same bad answer, same repair request, same cache key
    shown, note = first["messages"][-2:]
    assert json.loads(shown["content"]) == [{"name": "get_weather", "arguments": "{"}]
    assert note["role"] == "user" and "arguments_not_json" in note["content"]
    assert first["messages"][: len(request["messages"])] == request["messages"]


def rate_limit_error(headers: dict[str, str]) -> openai.RateLimitError:
    response = httpx.Response(
        429, headers=headers, request=httpx.Request("POST", "http://x/v1/chat/completions")
    )
    return openai.RateLimitError("slow down", response=response, body=None)


def test_retry_after_prefers_milliseconds_and_ignores_dates() -> None:
    assert retry_after_s(rate_limit_error({"retry-after-ms": "250", "retry-after": "1"})) == 0.25
    assert retry_after_s(rate_limit_error({"retry-after": "3"})) == 3.0
    assert retry_after_s(rate_limit_error({"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"})) is None
    assert retry_after_s(rate_limit_error({})) is None


def test_cost_uses_the_price_table_and_counts_what_the_cache_saved() -> None:
    result = LabelResult(price=Price(input_per_1m=2.0, output_per_1m=8.0))
    result.prompt_tokens, result.completion_tokens = 1_000_000, 500_000
    result.cached_prompt_tokens, result.cached_completion_tokens = 500_000, 0
    result.labelled = [{"key": str(i), "reason": ""} for i in range(1000)]
    counts = result.counts()
    assert counts["cost_usd"] == 6.0 and counts["saved_by_cache_usd"] == 1.0
    assert counts["cost_per_1k_documents_usd"] == 7.0
    assert LabelResult().counts()["cost_usd"] is None  # no price: unknown, not free


def test_progress_logs_rate_eta_and_spend_off_a_terminal(caplog) -> None:
    result = LabelResult(price=Price(input_per_1m=1.0, output_per_1m=1.0))
    progress = Progress(total=2, result=result, every_s=0.0)
    with caplog.at_level(logging.INFO, logger="stillroom.teacher"):
        result.labelled.append({"key": "a"})
        result.prompt_tokens = 10_000
        progress.tick()
    line = caplog.records[-1].getMessage()
    assert line.startswith("labelling 1/2") and "docs/s" in line and "ETA" in line
    assert "spend $0.0100" in line
