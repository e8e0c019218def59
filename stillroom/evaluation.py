"""Evaluation: generate on the held-out test split, score against the teacher's answers.

The same function scores the untrained base, the candidate and the current champion, so
the comparison is like for like: same prompts, same decoding, same metric module. Beside
agreement it measures what serving would cost: latency per request (one request at a
time, p50/p95), throughput in batches, and the compute cost per 1k requests, set against
the teacher's latency and cost per 1k from the labelling records.

Tool-call generations are read the way the student's chat-template family writes them and
handed to the metric as canonical compact JSON (`prompts.canonical_answer`), so the metric
modules never see a family's format; each row keeps the raw `generation` for the report.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stillroom.config import EvalConfig
from stillroom.inference import eval_prompts, generate_all, generate_batch, load_for_inference
from stillroom.prompts import canonical_answer, render_answer, supports_tools
from stillroom.scoring import example_rows, score_predictions
from stillroom.targets import Target
from stillroom.toolcalls import parse_tool_calls_json


@dataclass
class EvalReport:
    model_dir: str
    metrics: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: a value that was actually observed, no interpolation."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def measure_latency(
    model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, samples: int
) -> list[float]:
    """Milliseconds per request, one request at a time, as a caller of the served model sees it."""
    latencies = []
    for prompt in prompts[:samples]:
        started = time.perf_counter()
        generate_batch(model, tokenizer, [prompt], max_new_tokens)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def serving_figures(ms_per_example: float, latencies: list[float], cfg: EvalConfig) -> dict:
    """Throughput is the batched rate; cost per 1k assumes the machine is kept that busy."""
    seconds_per_1k = ms_per_example  # ms per example x 1000 examples / 1000 ms per s
    figures = {
        "ms_per_example": round(ms_per_example, 1),
        "throughput_per_s": round(1000 / ms_per_example, 3) if ms_per_example else math.nan,
        "cost_per_1k_usd": round(seconds_per_1k / 3600 * cfg.student_price_per_hour_usd, 6),
    }
    if latencies:
        figures["latency_p50_ms"] = round(percentile(latencies, 50), 1)
        figures["latency_p95_ms"] = round(percentile(latencies, 95), 1)
    return figures


def answer_budget(tokenizer: Any, answers: list[str], cfg: EvalConfig) -> int:
    """Generation cap from the data: the longest teacher answer in training, with headroom.

    A student that never closes its list runs to this cap; a cap fitted to the data
    stops it early instead of paying for tokens no valid answer needs. Answers are measured
    as the student writes them (`student_answer`), not as the dataset stores them.
    """
    if not answers:
        return cfg.max_new_tokens
    texts = [student_answer(tokenizer, a) for a in answers]
    longest = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return min(cfg.max_new_tokens, math.ceil(longest * cfg.answer_headroom) + 1)


def student_answer(tokenizer: Any, answer: str) -> str:
    """A stored answer as the student writes it: for a tools template, `<tool_call>` blocks,
    which cost more tokens than the compact JSON. A student of the compact family writes the
    stored answer itself, and answers that are not tool calls are measured as they are."""
    calls = parse_tool_calls_json(answer)
    if calls is None or not supports_tools(tokenizer):
        return answer
    return render_answer(tokenizer, calls)


def metric_predictions(tokenizer: Any, texts: list[str], target: Target) -> list[str]:
    """What the metric scores: tool calls as canonical compact JSON, other answers as written."""
    if target.kind != "tool_call":
        return texts
    return [canonical_answer(tokenizer, text) for text in texts]


def evaluate_model(
    model_dir: Path,
    test_rows: list[dict[str, str]],
    target: Target,
    cfg: EvalConfig,
    measure_requests: bool = True,
    train_answers: list[str] | None = None,
) -> EvalReport:
    model, tokenizer = load_for_inference(model_dir)
    prompts = eval_prompts(test_rows, tokenizer, target.student_system_prompt)
    budget = answer_budget(tokenizer, train_answers or [], cfg)
    generations = generate_all(model, tokenizer, prompts, budget, cfg.batch_size)
    references = [r["answer"] for r in test_rows]
    predictions = metric_predictions(tokenizer, generations.texts, target)
    # Tool schemas let the metric treat an optional argument given at its default as omitted.
    extra = {"tools": [r["tools"] for r in test_rows]} if target.kind == "tool_call" else {}
    metrics: dict[str, Any] = dict(
        score_predictions(target.metric.path, predictions, references, **extra)
    )
    latencies = (
        measure_latency(model, tokenizer, prompts, budget, cfg.latency_samples)
        if measure_requests
        else []
    )
    metrics |= serving_figures(generations.ms_per_example, latencies, cfg)
    metrics["max_new_tokens"] = budget
    rows = example_rows([r["id"] for r in test_rows], predictions, references, extra.get("tools"))
    for row, text in zip(rows, generations.texts, strict=True):
        row["generation"] = text  # what the student wrote, for reading a miss
    return EvalReport(model_dir=str(model_dir), metrics=metrics, rows=rows, latencies_ms=latencies)


def teacher_figures(labelled: list[dict[str, Any]], cost_per_1k_usd: float | None) -> dict:
    """The teacher's side of the trade, from what labelling recorded for each answer."""
    latencies = [float(r["latency_ms"]) for r in labelled if r.get("latency_ms") is not None]
    return {
        "latency_p50_ms": round(percentile(latencies, 50), 1) if latencies else None,
        "latency_p95_ms": round(percentile(latencies, 95), 1) if latencies else None,
        "cost_per_1k_usd": cost_per_1k_usd,
    }


def worst_examples(
    report: EvalReport, test_rows: list[dict[str, str]], limit: int
) -> list[dict[str, Any]]:
    """The misses most worth reading: unparsable first, then wrong function, then arguments."""
    by_id = {r["id"]: r for r in test_rows}

    def badness(row: dict[str, Any]) -> tuple[int, str]:
        return (int(row["valid"]) + int(row["name_match"]), row["id"])

    misses = sorted((r for r in report.rows if not r["exact_match"]), key=badness)
    return [
        {
            "id": row["id"],
            "input": last_user_text(by_id[row["id"]]["messages"]),
            "teacher": row["reference"],
            "student": row.get("generation", row["prediction"]),
            "verdict": verdict(row),
        }
        for row in misses[:limit]
    ]


def verdict(row: dict[str, Any]) -> str:
    if not row["valid"]:
        return "invalid"
    return "wrong function" if not row["name_match"] else "wrong arguments"


def last_user_text(messages_json: str) -> str:
    messages = json.loads(messages_json)
    users = [m.get("content") for m in messages if m.get("role") == "user"]
    return str(users[-1]) if users else ""
