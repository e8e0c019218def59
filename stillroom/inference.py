"""Batched greedy generation for evaluation (and later, serving), with latency per example.

Prompts are left-padded so every row in a batch ends at the same position and generation
continues from the real last token, not from padding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stillroom.prompts import render_row_prompt


@dataclass
class Generations:
    texts: list[str]
    seconds: float

    @property
    def ms_per_example(self) -> float:
        return 1000 * self.seconds / max(1, len(self.texts))


def load_for_inference(model_dir: Path) -> tuple[Any, Any]:
    import torch

    from stillroom.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model_dir, padding_side="left")
    model = load_causal_lm(model_dir, quantize_4bit=False, device_map=None)
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    return model, tokenizer


def eval_prompts(rows: list[dict[str, str]], tokenizer: Any, system_prompt: str) -> list[str]:
    """Each row's prompt exactly as training rendered it (`prompts.render_example`)."""
    return [render_row_prompt(tokenizer, system_prompt, r) for r in rows]


def generate_batch(
    model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int
) -> list[str]:
    import torch

    inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    inputs = inputs.to(model.device)
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def generate_all(
    model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int
) -> Generations:
    started = time.perf_counter()
    # Shortest prompts together: less padding per batch, so less wasted compute.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    by_index: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        outputs = generate_batch(model, tokenizer, [prompts[i] for i in chunk], max_new_tokens)
        by_index.update(zip(chunk, outputs, strict=True))
    texts = [by_index[i] for i in range(len(prompts))]
    return Generations(texts=texts, seconds=time.perf_counter() - started)
