"""LoRA training throughput on this machine: real (unpadded) tokens/s by batch size.

    .venv/bin/python benchmarks/train_throughput.py [--model smollm2-135m] [--steps 3]

Draws real prompt+answer lengths from the BFCL demo data, pads each batch as the trainer's
collator would, and times forward+backward with LoRA on all linear layers. Prints tokens/s
counting only real tokens, and each batch size's ratio to batch size 1: the figure behind
`training.batch_size` in configs/base.yaml.
"""

from __future__ import annotations

import argparse
import random
import time

from stillroom.env import apply_offline_env, state_dir

apply_offline_env()

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

from stillroom.models import load_causal_lm, load_tokenizer, resolve_base_model  # noqa: E402
from stillroom.prompts import render_completion, render_prompt  # noqa: E402
from stillroom.seeding import load_bfcl_category, recorded_tool_calls, to_document  # noqa: E402


def example_lengths(tokenizer, n: int, seed: int) -> list[int]:
    cases = [
        c
        for cat in ("simple_python", "multiple", "parallel", "parallel_multiple")
        for c in load_bfcl_category(cat)
    ]
    lengths = []
    for case in random.Random(seed).sample(cases, n):
        doc = to_document(case, "bench", "2026-01-01")
        text = render_prompt(tokenizer, "Answer with JSON.", doc["messages"], doc["tools"])
        text += render_completion(
            tokenizer, {"tool_calls": recorded_tool_calls(case["ground_truth"])}
        )
        lengths.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return lengths


def time_batches(model, lengths: list[int], batch_size: int, steps: int) -> float:
    """Real tokens per second over `steps` batches (after one warm-up batch)."""
    real = 0
    elapsed = 0.0
    for step in range(steps + 1):
        batch = lengths[step * batch_size : (step + 1) * batch_size]
        ids = torch.randint(3, 40000, (len(batch), max(batch)))
        mask = torch.zeros_like(ids)
        for row, length in enumerate(batch):
            mask[row, :length] = 1
        started = time.perf_counter()
        model(
            input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)
        ).loss.backward()
        if step:  # the first batch warms caches and allocators
            elapsed += time.perf_counter() - started
            real += sum(batch)
    return real / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = resolve_base_model(args.model, state_dir() / "models")
    model = get_peft_model(
        load_causal_lm(folder),
        LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, target_modules="all-linear"),
    )
    model.train()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    lengths = example_lengths(load_tokenizer(folder), max(sizes) * (args.steps + 1), seed=0)
    mean = sum(lengths) / len(lengths)
    print(f"model {args.model}, {args.threads} threads, mean example {mean:.0f} tokens")
    baseline = None
    for size in sizes:
        rate = time_batches(model, lengths, size, args.steps)
        baseline = baseline or rate
        print(f"batch {size}: {rate:7.1f} real tokens/s   ratio to batch 1: {rate / baseline:.2f}")


if __name__ == "__main__":
    main()
