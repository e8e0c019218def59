"""Evaluation: generate on the held-out test split, score against the teacher's answers.

The same function scores the untrained base and the trained student, so the comparison is
like for like: same prompts, same decoding, same metric module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stillroom.config import EvalConfig
from stillroom.inference import eval_prompts, generate_all, load_for_inference
from stillroom.scoring import example_rows, score_predictions
from stillroom.targets import Target


@dataclass
class EvalReport:
    model_dir: str
    metrics: dict[str, float]
    rows: list[dict[str, Any]] = field(default_factory=list)


def evaluate_model(
    model_dir: Path, test_rows: list[dict[str, str]], target: Target, cfg: EvalConfig
) -> EvalReport:
    model, tokenizer = load_for_inference(model_dir)
    prompts = eval_prompts(test_rows, tokenizer, target.student_system_prompt)
    generations = generate_all(model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size)
    references = [r["answer"] for r in test_rows]
    metrics = dict(score_predictions(target.metric.path, generations.texts, references))
    metrics["ms_per_example"] = round(generations.ms_per_example, 1)
    rows = example_rows([r["id"] for r in test_rows], generations.texts, references)
    return EvalReport(model_dir=str(model_dir), metrics=metrics, rows=rows)
