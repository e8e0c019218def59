from pathlib import Path

import pytest

from stillroom.models import load_tokenizer, resolve_base_model
from stillroom.prompts import render_completion, render_prompt, render_signature

TOOL = {
    "type": "function",
    "function": {
        "name": "book_flight",
        "description": "Book a flight between two cities on a given date for one passenger.",
        "parameters": {
            "type": "object",
            "properties": {
                "origin": {"type": "string"},
                "seats": {"type": "integer"},
                "cabin": {"type": "string", "enum": ["economy", "business"]},
                "stops": {"type": "array", "items": {"type": "integer"}},
            },
            "required": ["origin", "seats"],
        },
    },
}
MESSAGES = [
    {"role": "system", "content": "the production app's own system prompt"},
    {"role": "user", "content": "Two seats from Paris please"},
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    folder = resolve_base_model("tiny", tmp_path_factory.mktemp("models"))
    return load_tokenizer(Path(folder))


def test_signature_is_compact_and_marks_optional_arguments() -> None:
    line = render_signature(TOOL)
    assert line.startswith(
        "book_flight(origin: string, seats: integer, cabin?: string{economy|business}, "
        "stops?: array[integer]) - Book a flight"
    )
    assert line.endswith("...") and len(line.split(" - ", 1)[1]) <= 60  # description capped


def test_prompt_puts_tools_in_our_system_turn_and_ends_on_the_assistant_header(tokenizer) -> None:
    prompt = render_prompt(tokenizer, "Answer with JSON.", MESSAGES, [TOOL])
    assert prompt.startswith("<|im_start|>system\nAnswer with JSON.\nFunctions:\nbook_flight(")
    assert "the production app's own system prompt" not in prompt  # replaced, not stacked
    assert prompt.count("<|im_start|>system") == 1
    assert prompt.endswith(
        "<|im_start|>user\nTwo seats from Paris please<|im_end|>\n<|im_start|>assistant\n"
    )


def test_completion_is_compact_json_closed_by_end_of_turn(tokenizer) -> None:
    output = {"tool_calls": [{"name": "book_flight", "arguments": {"origin": "Paris", "seats": 2}}]}
    completion = render_completion(tokenizer, output)
    expected = '[{"name":"book_flight","arguments":{"origin":"Paris","seats":2}}]<|im_end|>'
    assert completion == expected


def test_prompt_tokens_are_a_prefix_of_prompt_plus_completion(tokenizer) -> None:
    # Completion-only loss finds the answer where the two tokenizations diverge; if the
    # prompt's tokens changed when the answer is appended, training would see a shifted context.
    prompt = render_prompt(tokenizer, "Answer with JSON.", MESSAGES, [TOOL])
    output = {"tool_calls": [{"name": "book_flight", "arguments": {"origin": "Paris", "seats": 2}}]}
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full = tokenizer(prompt + render_completion(tokenizer, output), add_special_tokens=False)
    assert full["input_ids"][: len(ids)] == ids
