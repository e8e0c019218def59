"""Training throughput and memory: Stillroom's configuration against a stock SFTTrainer one.

    .venv/bin/python benchmarks/training.py [--model smollm2-135m] [--steps 8] [--threads 2]

Same model, same BFCL demo examples (rendered by the one prompt function), same batch size
and number of optimizer steps. Each configuration trains in its own subprocess, one after
the other, so each has the cores to itself and reports its own peak memory:

- stock: SFTTrainer defaults for a prompt-completion set, LoRA on all linear layers, every
  batch padded to `max_length` (the common `padding="max_length"` recipe), fp32 (TRL's
  default bf16 is emulated on CPUs without native bf16: several minutes per step here).
- ours: `stillroom.training`'s trainer: padding-free batches (examples end to end, no pad
  tokens), sequence length fitted to the data, bf16 only where the CPU has it, threads set.
- ours, batch 1: the same examples one at a time, gradients accumulated over the batch
  size, so each optimizer step sees the same examples: what padding-free batching buys.
- ours, top layers: the same plus LoRA on the last 15 layers only (the demo profile).

Tokens/s counts real tokens (not padding) over the steps after the first, which warms
allocators. Prints each figure and its ratio to stock.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stillroom.env import apply_offline_env, state_dir

apply_offline_env()

CONFIGS = ("stock", "ours", "ours-bs1", "ours-top15")
STOCK_MAX_LENGTH = 512  # the base.yaml cap, padded to in full by the stock recipe


def step_timer() -> Any:
    """Real tokens and seconds from the end of step 1 to the end of the last step."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        start: tuple[float, int] | None = None
        end: tuple[float, int] | None = None

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            mark = (time.perf_counter(), int(state.num_input_tokens_seen))
            if state.global_step == 1:
                self.start = mark
            self.end = mark

    return StepTimer()


def stock_trainer(spec: Any, tokenizer: Any, rows: Any, timer: Any) -> Any:
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from stillroom.models import load_causal_lm

    cfg = spec.training
    args = SFTConfig(
        output_dir=str(Path(spec.output_dir) / "stock"),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        max_length=STOCK_MAX_LENGTH,
        pad_to_multiple_of=STOCK_MAX_LENGTH,  # every batch padded to max_length
        include_num_input_tokens_seen="non_padding",
        # TRL's default is bf16, which a CPU without native bf16 emulates at minutes per
        # step: held at fp32 here so the ratio measures batching and configuration.
        bf16=False,
        use_cpu=True,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=cfg.seed,
    )
    return SFTTrainer(
        model=load_causal_lm(Path(spec.base_model_dir)),
        args=args,
        train_dataset=rows,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            task_type="CAUSAL_LM", r=16, lora_alpha=32, target_modules="all-linear"
        ),
        callbacks=[timer],
    )


def run_one(name: str, spec_path: Path) -> dict[str, Any]:
    import torch
    from datasets import load_from_disk

    from stillroom import training
    from stillroom.models import load_tokenizer

    spec = training.TrainSpec.model_validate_json(spec_path.read_text())
    torch.set_num_threads(spec.training.threads)
    tokenizer = load_tokenizer(Path(spec.base_model_dir))
    train_split = load_from_disk(spec.dataset_dir)["train"]
    timer = step_timer()
    if name == "stock":
        rows = training.sft_rows(train_split, tokenizer, spec.system_prompt)
        trainer = stock_trainer(spec, tokenizer, rows, timer)
    else:
        rows, length, _ = training.prepared_split(
            train_split, tokenizer, spec.system_prompt, spec.training.max_length
        )
        trainer = training.build_trainer(
            spec, tokenizer, (rows, rows.select(range(4))), length, training.throughput_callback()
        )
        trainer.add_callback(timer)
    trainer.train()
    seconds = timer.end[0] - timer.start[0]
    return {
        "config": name,
        "tokens_per_second": (timer.end[1] - timer.start[1]) / seconds,
        "seconds_per_step": seconds / (spec.training.max_steps - 1),
        "peak_rss_mib": training.peak_memory_mib(),
        "loss": trainer.state.log_history[-1].get("train_loss"),
    }


def write_inputs(root: Path, model: str, steps: int, threads: int, batch: int) -> dict[str, Path]:
    from stillroom.config import SplitConfig, TrainingConfig
    from stillroom.models import resolve_base_model
    from stillroom.seeding import labelled_cases
    from stillroom.splits import build_splits
    from stillroom.targets import load_target
    from stillroom.training import TrainSpec

    build_splits(labelled_cases(batch * steps * 2, seed=0), SplitConfig(seed=7)).save_to_disk(
        str(root / "ds")
    )
    base = resolve_base_model(model, state_dir() / "models")
    common = {"max_steps": steps, "batch_size": batch, "threads": threads, "logging_steps": 1}
    # No validation or checkpoints inside the timed steps: this measures training alone.
    ours = common | {"eval_steps": 10 * steps, "early_stopping_patience": None}
    settings = {
        "stock": common,
        "ours": ours,
        # One example at a time, 4 accumulated: the same examples per optimizer step.
        "ours-bs1": ours | {"batch_size": 1, "grad_accum": batch},
        "ours-top15": ours | {"lora": {"top_layers": 15}},
    }
    paths = {}
    for name, training in settings.items():
        spec = TrainSpec(
            dataset_dir=str(root / "ds"),
            base_model_dir=str(base),
            output_dir=str(root / name),
            system_prompt=load_target("configs/targets/bfcl_tool_call.yaml").student_system_prompt,
            quantization="none",
            training=TrainingConfig(**training),
        )
        paths[name] = root / f"{name}.json"
        paths[name].write_text(spec.model_dump_json())
    return paths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", nargs=2, metavar=("CONFIG", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], Path(args.one[1]))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        specs = write_inputs(Path(tmp), args.model, args.steps, args.threads, args.batch_size)
        results = {}
        for name in CONFIGS:
            out = subprocess.run(
                [sys.executable, __file__, "--one", name, str(specs[name])],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results[name] = json.loads(out.strip().splitlines()[-1])
    print(
        f"model {args.model}, {args.threads} threads, batch {args.batch_size}, "
        f"{args.steps} steps (first one untimed)"
    )
    stock = results["stock"]
    for name, r in results.items():
        print(
            f"{name:11s} {r['tokens_per_second']:7.1f} real tokens/s "
            f"({r['tokens_per_second'] / stock['tokens_per_second']:.2f}x stock)  "
            f"{r['seconds_per_step']:6.2f} s/step  peak RSS {r['peak_rss_mib']:6.0f} MiB "
            f"({r['peak_rss_mib'] / stock['peak_rss_mib']:.2f}x)"
        )


if __name__ == "__main__":
    main()
