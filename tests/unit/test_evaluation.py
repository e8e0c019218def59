"""Evaluation reads each family's generations and scores them as canonical compact JSON.

Generation itself is replaced by the texts a perfect (or truncated) student would write, so
the scores are known; the real tiny models, prompts and metric module are used as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stillroom import evaluation
from stillroom.config import EvalConfig
from stillroom.inference import Generations
from stillroom.models import load_tokenizer, resolve_base_model
from stillroom.prompts import render_example
from stillroom.targets import load_target
from stillroom.toolcalls import render_tool_calls

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city"],
        },
    },
}
PARIS = {"name": "get_weather", "arguments": {"city": "Paris"}}
TOKYO = {"name": "get_weather", "arguments": {"city": "Tokyo", "unit": "celsius"}}
ANSWERS = [[PARIS], [PARIS, TOKYO], [], [TOKYO]]


def dataset_row(index: int, calls: list[dict[str, Any]]) -> dict[str, str]:
    return {
        "id": f"r{index}",
        "messages": json.dumps([{"role": "user", "content": f"weather, case {index}"}]),
        "tools": json.dumps([TOOL]),
        "answer": render_tool_calls(calls),
    }


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.mark.parametrize("name", ["tiny", "tiny-tools"])
def test_generations_are_scored_in_the_families_own_format(
    name: str, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = resolve_base_model(name, models_dir)
    tokenizer = load_tokenizer(folder)
    target = load_target("configs/targets/bfcl_tool_call.yaml")
    rows = [dataset_row(i, calls) for i, calls in enumerate(ANSWERS)]
    written = {}
    for row in rows:
        prompt, completion = render_example(tokenizer, target.student_system_prompt, row)
        written[prompt] = completion.removesuffix(tokenizer.eos_token)
    # The last student ran out of tokens half way through its answer.
    last = evaluation.eval_prompts(rows[-1:], tokenizer, target.student_system_prompt)[0]
    written[last] = written[last][: len(written[last]) // 2]

    def fake_generate_all(model, tok, prompts, max_new_tokens, batch_size):  # noqa: ANN001, ANN202
        return Generations(texts=[written[p] for p in prompts], seconds=0.4)

    monkeypatch.setattr(evaluation, "generate_all", fake_generate_all)
    report = evaluation.evaluate_model(
        folder, rows, target, EvalConfig(), measure_requests=False, train_answers=[]
    )
    assert report.metrics["accuracy"] == 0.75
    assert report.metrics["validity_rate"] == 0.75
    assert report.metrics["no_call"] == {"count": 1, "accuracy": 1.0}
    predictions = [row["prediction"] for row in report.rows]
    assert predictions == [render_tool_calls(c) for c in ANSWERS[:3]] + [""]
    assert [row["generation"] for row in report.rows] == [written[p] for p in written]
    if name == "tiny-tools":
        assert report.rows[0]["generation"].startswith("<tool_call>\n")


def test_generation_budget_counts_the_families_answer_tokens(models_dir: Path) -> None:
    answers = [render_tool_calls([PARIS, TOKYO])]
    cfg = EvalConfig(max_new_tokens=1000, answer_headroom=1.0)
    budgets = {}
    for name in ("tiny", "tiny-tools"):
        tokenizer = load_tokenizer(resolve_base_model(name, models_dir))
        row = dataset_row(0, [PARIS, TOKYO])
        _, completion = render_example(tokenizer, "", row)
        answer_tokens = len(tokenizer(completion, add_special_tokens=False)["input_ids"])
        budgets[name] = evaluation.answer_budget(tokenizer, answers, cfg)
        assert budgets[name] == answer_tokens  # the answer, +1 for its end-of-turn token
    assert budgets["tiny-tools"] > budgets["tiny"]  # blocks cost more than compact JSON
