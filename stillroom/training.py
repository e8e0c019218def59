"""Student training: TRL `SFTTrainer` + PEFT LoRA, QLoRA (4-bit NF4) when CUDA is there.

This module is what `accelerate launch` runs, on a laptop CPU or on a GPU worker alike:

    accelerate launch --config_file infra/accelerate/cpu.yaml -m stillroom.training --spec S

`launch_training` builds that command from the pipeline; the spec file carries everything
the subprocess needs, so the trainer never re-reads pipeline config or talks to S3/MLflow.
Loss is on the assistant's answer only (prompt-completion rows, completion-only loss).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from stillroom.config import TrainingConfig, resolve_path
from stillroom.env import apply_offline_env

log = logging.getLogger("stillroom.training")


class TrainSpec(BaseModel):
    """The hand-off from the pipeline to the training subprocess (written as JSON)."""

    dataset_dir: str
    base_model_dir: str
    output_dir: str
    system_prompt: str
    quantization: str
    training: TrainingConfig


class TrainingFailed(RuntimeError):
    pass


# --- launching (runs in the pipeline process) -------------------------------------------


def launch_command(spec_path: Path, accelerate_config: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(resolve_path(accelerate_config)),
        "-m",
        "stillroom.training",
        "--spec",
        str(spec_path),
    ]


def launch_training(spec: TrainSpec) -> dict[str, Any]:
    """Run training in a subprocess through `accelerate launch`; return its metrics."""
    output_dir = Path(spec.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    spec_path = output_dir / "train_spec.json"
    spec_path.write_text(spec.model_dump_json(indent=2))
    env = os.environ.copy()
    # Thread count is set on purpose: inheriting "all cores" oversubscribes small machines.
    env["OMP_NUM_THREADS"] = str(spec.training.threads)
    env["MKL_NUM_THREADS"] = str(spec.training.threads)
    log_path = output_dir / "train.log"
    with log_path.open("w") as log_file:
        code = subprocess.call(
            launch_command(spec_path, spec.training.accelerate_config),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
    if code != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
        raise TrainingFailed(f"training exited with {code}; last lines of {log_path}:\n{tail}")
    return json.loads((output_dir / "metrics.json").read_text())


# --- inside the trainer process -----------------------------------------------------------


def use_4bit(quantization: str) -> bool:
    import torch

    if quantization == "nf4":
        return True
    return quantization == "auto" and torch.cuda.is_available()


def sft_rows(dataset: Any, tokenizer: Any, system_prompt: str) -> Any:
    """Dataset rows -> {prompt, completion} text via the shared rendering in prompts.py."""
    from stillroom.prompts import render_prompt

    def render(row: dict[str, str]) -> dict[str, str]:
        prompt = render_prompt(
            tokenizer, system_prompt, json.loads(row["messages"]), json.loads(row["tools"])
        )
        return {"prompt": prompt, "completion": row["answer"] + tokenizer.eos_token}

    return dataset.map(render, remove_columns=dataset.column_names)


def device_map_for_process() -> dict[str, int] | None:
    """Pin each DDP process to its own GPU; `device_map="auto"` would disable data parallel."""
    import torch

    if not torch.cuda.is_available():
        return None
    return {"": int(os.environ.get("LOCAL_RANK", "0"))}


def build_model(spec: TrainSpec, quantize: bool) -> Any:
    from peft import prepare_model_for_kbit_training

    from stillroom.models import load_causal_lm

    # load_causal_lm already turned off bitsandbytes' CPU bf16 repack on every 4-bit layer.
    model = load_causal_lm(Path(spec.base_model_dir), quantize, device_map_for_process())
    if quantize:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def lora_config(spec: TrainSpec, model: Any) -> Any:
    """PEFT config; with `top_layers`, adapters only on the last N decoder layers."""
    from peft import LoraConfig

    lora = spec.training.lora
    kwargs: dict[str, Any] = {"target_modules": lora.target_modules}
    if lora.top_layers:
        n_layers = model.config.num_hidden_layers
        kwargs["layers_to_transform"] = list(range(max(0, n_layers - lora.top_layers), n_layers))
        # PEFT needs explicit module names to combine them with a layer filter.
        if lora.target_modules == "all-linear":
            kwargs["target_modules"] = decoder_linear_names(model)
    return LoraConfig(
        task_type="CAUSAL_LM", r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, **kwargs
    )


def decoder_linear_names(model: Any) -> list[str]:
    """Leaf names of the linear layers inside decoder blocks (q_proj, ..., down_proj)."""
    import torch

    # bitsandbytes' Linear4bit subclasses torch.nn.Linear, so 4-bit models are covered too.
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if ".layers." in name and isinstance(module, torch.nn.Linear)
    }
    if not names:
        raise ValueError("found no linear layers inside decoder blocks")
    return sorted(names)


def sft_config(spec: TrainSpec, quantize: bool, output_dir: Path) -> Any:
    import torch
    from trl import SFTConfig

    cfg = spec.training
    on_cuda = torch.cuda.is_available()
    return SFTConfig(
        output_dir=str(output_dir / "checkpoints"),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup_ratio,  # a value below 1 is read as a share of all steps
        logging_steps=cfg.logging_steps,
        max_length=cfg.max_length,
        completion_only_loss=True,
        # On CPU recomputation costs more time than the memory it saves at this size.
        gradient_checkpointing=quantize and on_cuda,
        bf16=on_cuda,
        use_cpu=not on_cuda,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        seed=cfg.seed,
        dataloader_num_workers=0,
    )


def merge_adapter(spec: TrainSpec, adapter_dir: Path, merged_dir: Path, tokenizer: Any) -> None:
    """Merge LoRA into a full-precision copy of the base: 4-bit weights cannot be merged."""
    from peft import PeftModel

    from stillroom.models import load_causal_lm

    base = load_causal_lm(Path(spec.base_model_dir), quantize_4bit=False, device_map=None)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(merged_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(merged_dir))


def count_tokens(dataset: Any) -> int:
    return int(sum(len(ids) for ids in dataset["input_ids"]))


def train(spec: TrainSpec) -> dict[str, Any]:
    import torch
    from datasets import load_from_disk
    from trl import SFTTrainer

    from stillroom.models import load_tokenizer

    torch.set_num_threads(spec.training.threads)
    output_dir = Path(spec.output_dir)
    quantize = use_4bit(spec.quantization)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    compute = "bf16" if device == "cuda" else "fp32"
    mode = f"QLoRA (4-bit NF4 base, {compute} compute)" if quantize else "LoRA (fp32 base)"
    log.warning("training %s on %s with %d threads", mode, device, torch.get_num_threads())

    # --- data -----------------------------------------------------------------------------
    tokenizer = load_tokenizer(Path(spec.base_model_dir), padding_side="right")
    splits = load_from_disk(spec.dataset_dir)
    train_rows = sft_rows(splits["train"], tokenizer, spec.system_prompt)
    eval_rows = sft_rows(splits["validation"], tokenizer, spec.system_prompt)

    # --- model + trainer --------------------------------------------------------------------
    model = build_model(spec, quantize)
    trainer = SFTTrainer(
        model=model,
        args=sft_config(spec, quantize, output_dir),
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        processing_class=tokenizer,
        peft_config=lora_config(spec, model),
    )
    # Evaluated before training so the run shows how far LoRA moved the validation loss.
    initial_eval = trainer.evaluate()

    # --- train ------------------------------------------------------------------------------
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    final_eval = trainer.evaluate()

    # --- save ---------------------------------------------------------------------------------
    metrics: dict[str, Any] = {}
    if trainer.is_world_process_zero():
        adapter_dir, merged_dir = output_dir / "adapter", output_dir / "merged"
        trainer.save_model(str(adapter_dir))
        merge_adapter(spec, adapter_dir, merged_dir, tokenizer)
        epochs_done = result.metrics.get("epoch", spec.training.epochs)
        tokens = count_tokens(trainer.train_dataset) * float(epochs_done)
        metrics = {
            "mode": mode,
            "device": device,
            "threads": torch.get_num_threads(),
            "train_examples": train_rows.num_rows,
            "steps": result.global_step,
            "epochs": epochs_done,
            "train_loss": result.training_loss,
            "eval_loss_before": initial_eval["eval_loss"],
            "eval_loss_after": final_eval["eval_loss"],
            "train_seconds": round(seconds, 2),
            "train_tokens_per_second": round(tokens / seconds, 1),
            "loss_curve": [
                {"step": e["step"], "loss": e["loss"]}
                for e in trainer.state.log_history
                if "loss" in e
            ],
            "adapter_dir": str(adapter_dir),
            "merged_dir": str(merged_dir),
        }
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def main(argv: list[str] | None = None) -> None:
    apply_offline_env()
    parser = argparse.ArgumentParser(description="Train a LoRA/QLoRA student from a spec file.")
    parser.add_argument("--spec", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    train(TrainSpec.model_validate_json(args.spec.read_text()))


if __name__ == "__main__":
    main()
