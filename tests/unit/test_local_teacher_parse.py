"""Reading the local teacher's completions: `<tool_call>` blocks, malformed ones, bare JSON."""

from __future__ import annotations

import base64
import hashlib
import json

from stillroom.local_teacher import (
    parse_model_calls,
    parse_tool_call_blocks,
    record_hex,
    template_messages,
)


def block(body: str) -> str:
    return f"<tool_call>\n{body}\n</tool_call>"


def test_one_block_gives_one_call_with_parsed_arguments() -> None:
    text = block('{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}')
    assert parse_tool_call_blocks(text) == [
        {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
    ]


def test_parallel_blocks_keep_their_order_and_ignore_chatter() -> None:
    text = (
        "Sure, two calls.\n"
        + block('{"name": "a", "arguments": {"x": 1}}')
        + "\n"
        + block('{"name": "b", "arguments": {}}')
        + "\nDone."
    )
    assert parse_tool_call_blocks(text) == [
        {"name": "a", "arguments": {"x": 1}},
        {"name": "b", "arguments": {}},
    ]


def test_missing_or_null_arguments_mean_no_arguments() -> None:
    text = block('{"name": "now"}') + block('{"name": "later", "arguments": null}')
    assert parse_tool_call_blocks(text) == [
        {"name": "now", "arguments": {}},
        {"name": "later", "arguments": {}},
    ]


def test_malformed_block_keeps_name_and_raw_arguments_text() -> None:
    good = block('{"name": "a", "arguments": {"x": 1}}')
    bad = block('{"name": "get_weather", "arguments": {"city": "Paris",}}')
    calls = parse_tool_call_blocks(good + bad)
    assert calls[0] == {"name": "a", "arguments": {"x": 1}}
    assert calls[1] == {"name": "get_weather", "arguments": '{"city": "Paris",}'}


def test_arguments_written_as_a_json_string_pass_through_as_that_string() -> None:
    # The server forwards it as OpenAI's `arguments` string; the client decides if it parses.
    text = block(json.dumps({"name": "f", "arguments": '{"x": 1}'}))
    assert parse_tool_call_blocks(text) == [{"name": "f", "arguments": '{"x": 1}'}]


def test_block_cut_off_by_the_token_budget_is_malformed_not_dropped() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par'
    assert parse_tool_call_blocks(text) == [{"name": "get_weather", "arguments": '{"city": "Par'}]


def test_block_without_a_readable_name_gives_an_empty_name_and_the_whole_body() -> None:
    assert parse_tool_call_blocks(block("get_weather(city='Paris')")) == [
        {"name": "", "arguments": "get_weather(city='Paris')"}
    ]


def test_blocks_win_and_fenced_json_is_the_fallback() -> None:
    fenced = '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```'
    assert parse_model_calls(fenced) == (
        [{"name": "get_weather", "arguments": {"city": "Paris"}}],
        "json",
    )
    both = block('{"name": "a", "arguments": {}}') + "\n" + fenced
    assert parse_model_calls(both) == ([{"name": "a", "arguments": {}}], "tool_call")


def test_text_without_a_call_gives_no_calls() -> None:
    assert parse_model_calls("It is sunny in Paris.") == ([], "none")
    assert parse_model_calls('{"city": "Paris"}') == ([], "none")  # an object, not a call


def test_openai_messages_are_shaped_for_the_chat_template() -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {"type": "function", "function": {"name": "bad", "arguments": "{oops"}},
            ],
        },
    ]
    shaped = template_messages(messages)
    assert shaped[0] == messages[0]
    assert shaped[1]["content"] == ""
    assert [c["function"]["arguments"] for c in shaped[1]["tool_calls"]] == [
        {"city": "Paris"},
        "{oops",
    ]
    assert messages[1]["content"] is None  # the caller's request is not modified


def test_record_hash_decodes_to_hex() -> None:
    digest = hashlib.sha256(b"part").digest()
    record = base64.urlsafe_b64encode(digest).decode().rstrip("=")
    assert record_hex(record) == digest.hex()
