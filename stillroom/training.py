"""Student training: TRL `SFTTrainer` + PEFT LoRA, QLoRA (4-bit NF4) when CUDA is there.

This module is what the launcher runs, on a laptop CPU or on a GPU worker alike:

    accelerate launch --config_file infra/accelerate/single_gpu.yaml -m stillroom.training --spec S
    torchrun --standalone --nproc-per-node 2 -m stillroom.training --spec S   # DDP on CPU

`launch_training` builds that command from the pipeline; the spec file carries everything
the subprocess needs, so the trainer never re-reads pipeline config or talks to S3/MLflow.
Loss is on the assistant's answer only. Validation runs every `eval_steps`, each validation
is a checkpoint, the best one is what gets saved, and a relaunch on the same output folder
resumes from the last checkpoint instead of starting over.
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

CHECKPOINTS = "checkpoints"


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


def launch_command(spec_path: Path, cfg: TrainingConfig) -> list[str]:
    entry = ["-m", "stillroom.training", "--spec", str(spec_path)]
    if cfg.launcher == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={cfg.processes}",
            *entry,
        ]
    config = str(resolve_path(cfg.accelerate_config))
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config, *entry]


def training_env(cfg: TrainingConfig) -> dict[str, str]:
    """The subprocess environment, with thread counts set on purpose.

    Inheriting "all cores" per process oversubscribes small machines: with torchrun each
    process gets its share of `threads`.
    """
    env = os.environ.copy()
    processes = cfg.processes if cfg.launcher == "torchrun" else 1
    per_process = str(max(1, cfg.threads // processes))
    env["OMP_NUM_THREADS"] = per_process
    env["MKL_NUM_THREADS"] = per_process
    return env


def write_spec(spec: TrainSpec) -> Path:
    output_dir = Path(spec.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    spec_path = output_dir / "train_spec.json"
    spec_path.write_text(spec.model_dump_json(indent=2))
    return spec_path


def launch_training(spec: TrainSpec) -> dict[str, Any]:
    """Run training in a subprocess; return its metrics. Relaunching resumes."""
    spec_path = write_spec(spec)
    log_path = Path(spec.output_dir) / "train.log"
    # Appended, not truncated: an interrupted attempt's log is evidence worth keeping.
    with log_path.open("a") as log_file:
        code = subprocess.call(
            launch_command(spec_path, spec.training),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=training_env(spec.training),
        )
    if code != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
        raise TrainingFailed(f"training exited with {code}; last lines of {log_path}:\n{tail}")
    return json.loads((Path(spec.output_dir) / "metrics.json").read_text())


# --- inside the trainer process -----------------------------------------------------------


def use_4bit(quantization: str) -> bool:
    import torch

    if quantization == "nf4":
        return True
    return quantization == "auto" and torch.cuda.is_available()


def cpu_has_native_bf16() -> bool:
    """avx512_bf16 or AMX: without them bf16 matmuls are emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def use_bf16(setting: str) -> bool:
    import torch

    if setting != "auto":
        return setting == "on"
    return torch.cuda.is_available() or cpu_has_native_bf16()


def training_mode(quantize: bool, bf16: bool, device: str) -> str:
    """How the base is stored and how it computes, as the run records it."""
    compute = "bf16" if bf16 else "fp32"
    if quantize:
        return f"QLoRA (4-bit NF4 base, {compute} compute)"
    base = "bf16" if device == "cuda" else "fp32"  # models.default_dtype
    return f"LoRA ({base} base)" if compute == base else f"LoRA ({base} base, {compute} autocast)"


def sft_rows(dataset: Any, tokenizer: Any, system_prompt: str) -> Any:
    """Dataset rows -> {prompt, completion} text via the shared rendering in prompts.py."""
    from stillroom.prompts import render_example

    def render(row: dict[str, str]) -> dict[str, str]:
        prompt, completion = render_example(tokenizer, system_prompt, row)
        return {"prompt": prompt, "completion": completion}

    return dataset.map(render, remove_columns=dataset.column_names)


def tokenize_rows(rows: Any, tokenizer: Any) -> Any:
    """{prompt, completion} -> input_ids + completion_mask.

    Prompt and completion are tokenized apart and joined, so the prompt's tokens are exactly
    those the model sees at inference (where the prompt is tokenized alone); tokenizing the
    joined text can merge tokens across the boundary.
    """

    def tokenize(row: dict[str, str]) -> dict[str, list[int]]:
        prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        return {
            "input_ids": prompt + completion,
            "completion_mask": [0] * len(prompt) + [1] * len(completion),
        }

    return rows.map(tokenize, remove_columns=rows.column_names)


def fit_length(rows: Any, cap: int) -> tuple[Any, int, int]:
    """Drop examples over `cap` tokens (a cut answer teaches the student to stop mid-call);
    return the rows, the longest kept length (the sequence length used) and the drop count."""
    lengths = [len(ids) for ids in rows["input_ids"]]
    kept = [i for i, n in enumerate(lengths) if n <= cap]
    if not kept:
        raise ValueError(f"every example is longer than training.max_length={cap} tokens")
    return rows.select(kept), max(lengths[i] for i in kept), len(lengths) - len(kept)


def device_map_for_process() -> dict[str, int] | None:
    """Pin each DDP process to its own GPU; `device_map="auto"` would disable data parallel."""
    import torch

    if not torch.cuda.is_available():
        return None
    return {"": int(os.environ.get("LOCAL_RANK", "0"))}


def build_model(spec: TrainSpec, quantize: bool) -> Any:
    import torch
    from peft import prepare_model_for_kbit_training

    from stillroom.models import load_causal_lm

    # load_causal_lm already turned off bitsandbytes' CPU bf16 repack on every 4-bit layer.
    model = load_causal_lm(Path(spec.base_model_dir), quantize, device_map_for_process())
    if quantize:
        # Casts norms/embeddings to fp32 for stable 4-bit training; checkpointing is a GPU
        # memory trade that costs CPU time at this size.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=torch.cuda.is_available()
        )
    return model


def lora_config(spec: TrainSpec, model: Any) -> Any:
    """PEFT config; with `top_layers`, adapters only on the last N decoder layers."""
    from peft import LoraConfig

    lora = spec.training.lora
    refuse_tied_head_adapter(model, lora.target_modules)
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


def refuse_tied_head_adapter(model: Any, target_modules: list[str] | str) -> None:
    """A LoRA on a tied lm_head merges into the tensor the input embeddings share, so the
    merged model silently differs from the trained one (peft cannot merge it apart)."""
    names = [target_modules] if isinstance(target_modules, str) else target_modules
    if model.config.tie_word_embeddings and "lm_head" in names:
        raise ValueError(
            "lora.target_modules includes lm_head, but this model ties lm_head to its input "
            "embeddings: the merged model would be wrong. Leave lm_head out."
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


def sft_config(spec: TrainSpec, quantize: bool, max_length: int) -> Any:
    import torch
    from trl import SFTConfig

    cfg = spec.training
    on_cuda = torch.cuda.is_available()
    packed = cfg.batching == "packed"
    return SFTConfig(
        output_dir=str(Path(spec.output_dir) / CHECKPOINTS),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup_ratio,  # a value below 1 is read as a share of all steps
        logging_steps=cfg.logging_steps,
        # Examples over the length were dropped already; padding-free without packing
        # refuses a max_length because it would not enforce it.
        max_length=max_length if cfg.batching != "padding_free" else None,
        packing=packed,
        packing_strategy="bfd",
        padding_free=cfg.batching == "padding_free",
        completion_only_loss=True,
        gradient_checkpointing=quantize and on_cuda,
        bf16=use_bf16(cfg.bf16),
        use_cpu=not on_cuda,
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.eval_steps,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        include_num_input_tokens_seen="non_padding",
        # LoRA leaves most parameters frozen; DDP must not wait for their gradients.
        ddp_find_unused_parameters=False,
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
    )


def peak_memory_mib() -> float:
    """Peak GPU memory allocated on CUDA; peak resident memory of this process on CPU."""
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def throughput_callback() -> Any:
    """Adds real (non-padding) tokens/s and peak memory to every logged step.

    Written into `state.log_history`, so it lands in checkpoints and survives a resume.
    """
    from transformers import TrainerCallback

    class Throughput(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # A resumed state already counts the tokens of the attempts before this one.
            self.tokens_at_start = state.num_input_tokens_seen
            self.mark = (time.perf_counter(), state.num_input_tokens_seen)

        def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            entry = state.log_history[-1] if state.log_history else {}
            if "loss" not in entry:
                return  # an eval entry: tokens/s is a training figure
            now, tokens = time.perf_counter(), state.num_input_tokens_seen
            seconds = now - self.mark[0]
            entry["tokens_per_second"] = round((tokens - self.mark[1]) / max(seconds, 1e-9), 1)
            entry["peak_memory_mib"] = round(peak_memory_mib(), 1)
            self.mark = (now, tokens)

    return Throughput()


def build_trainer(
    spec: TrainSpec, tokenizer: Any, rows: tuple[Any, Any], max_length: int, throughput: Any
) -> Any:
    from transformers import EarlyStoppingCallback
    from trl import SFTTrainer

    cfg = spec.training
    quantize = use_4bit(spec.quantization)
    model = build_model(spec, quantize)
    callbacks = [throughput]
    if cfg.early_stopping_patience is not None:
        callbacks.append(
            EarlyStoppingCallback(cfg.early_stopping_patience, cfg.early_stopping_threshold)
        )
    args = sft_config(spec, quantize, max_length)
    # The patience counter travels with the checkpoint, so a resumed run stops where the
    # uninterrupted one would have.
    args.restore_callback_states_from_checkpoint = True
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=rows[0],
        eval_dataset=rows[1],
        processing_class=tokenizer,
        peft_config=lora_config(spec, model),
        callbacks=callbacks,
    )


def initial_eval_loss(trainer: Any, output_dir: Path) -> float:
    """Validation loss of the untrained adapter: how far training moved it.

    Kept in a file because train() starts a fresh log history, and a resumed attempt must
    report the first attempt's figure, not evaluate a half-trained model as "before".
    """
    path = output_dir / "eval_before.json"
    if path.is_file():
        return float(json.loads(path.read_text())["eval_loss"])
    loss = float(trainer.evaluate()["eval_loss"])
    if trainer.is_world_process_zero():
        path.write_text(json.dumps({"eval_loss": loss}))
    return loss


def last_checkpoint(output_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    folder = output_dir / CHECKPOINTS
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def merge_adapter(spec: TrainSpec, adapter_dir: Path, merged_dir: Path, tokenizer: Any) -> None:
    """Merge LoRA into a full-precision copy of the base: 4-bit weights cannot be merged."""
    from peft import PeftModel

    from stillroom.models import load_causal_lm

    base = load_causal_lm(Path(spec.base_model_dir), quantize_4bit=False, device_map=None)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(merged_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(merged_dir))


def prepared_split(
    dataset: Any, tokenizer: Any, system_prompt: str, cap: int
) -> tuple[Any, int, int]:
    return fit_length(tokenize_rows(sft_rows(dataset, tokenizer, system_prompt), tokenizer), cap)


def train(spec: TrainSpec) -> dict[str, Any]:
    import torch
    from datasets import load_from_disk

    from stillroom.models import load_tokenizer

    cfg = spec.training
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", cfg.threads)))
    output_dir = Path(spec.output_dir)
    quantize = use_4bit(spec.quantization)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    mode = training_mode(quantize, use_bf16(cfg.bf16), device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    log.warning(
        "training %s on %s, %d process(es) x %d threads, %s batches",
        mode,
        device,
        world,
        torch.get_num_threads(),
        cfg.batching,
    )

    # --- data -----------------------------------------------------------------------------
    tokenizer = load_tokenizer(Path(spec.base_model_dir), padding_side="right")
    splits = load_from_disk(spec.dataset_dir)
    train_rows, max_length, dropped = prepared_split(
        splits["train"], tokenizer, spec.system_prompt, cfg.max_length
    )
    eval_rows, _, eval_dropped = prepared_split(
        splits["validation"], tokenizer, spec.system_prompt, cfg.max_length
    )
    if dropped or eval_dropped:
        log.warning(
            "dropped %d train / %d validation examples over %d tokens",
            dropped,
            eval_dropped,
            cfg.max_length,
        )

    # --- train, resuming when an earlier attempt left checkpoints ----------------------------
    throughput = throughput_callback()
    trainer = build_trainer(spec, tokenizer, (train_rows, eval_rows), max_length, throughput)
    resume_from = last_checkpoint(output_dir)
    if resume_from:
        log.warning("resuming from %s", resume_from)
    eval_before = initial_eval_loss(trainer, output_dir)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - started
    # The trainer validates the last step too and reloads the best checkpoint; its score is
    # that checkpoint's. Without any validation (fewer steps than eval_steps), measure now.
    best = trainer.state.best_metric
    eval_after = float(best) if best is not None else float(trainer.evaluate()["eval_loss"])

    # --- save ---------------------------------------------------------------------------------
    adapter_dir, merged_dir = output_dir / "adapter", output_dir / "merged"
    trainer.save_model(str(adapter_dir))  # every rank calls it; only rank 0 writes
    if not trainer.is_world_process_zero():
        return {}
    merge_adapter(spec, adapter_dir, merged_dir, tokenizer)
    history = trainer.state.log_history
    steps_planned = trainer.state.max_steps
    metrics: dict[str, Any] = {
        "mode": mode,
        "device": device,
        "processes": world,
        "threads": torch.get_num_threads(),
        "batching": cfg.batching,
        "train_examples": train_rows.num_rows,
        "dropped_too_long": dropped + eval_dropped,
        "max_length": max_length,
        "steps": result.global_step,
        "steps_planned": steps_planned,
        "stopped_early": result.global_step < steps_planned,
        "resumed_from": Path(resume_from).name if resume_from else None,
        "epochs": round(float(trainer.state.epoch or 0), 3),
        "train_loss": result.training_loss,
        "eval_loss_before": eval_before,
        "eval_loss_after": eval_after,
        "best_checkpoint": Path(trainer.state.best_model_checkpoint or "").name or None,
        "train_seconds": round(seconds, 2),
        "train_tokens": int(trainer.state.num_input_tokens_seen),
        "train_tokens_per_second": round(
            (trainer.state.num_input_tokens_seen - throughput.tokens_at_start) / seconds, 1
        ),
        "peak_memory_mib": round(peak_memory_mib(), 1),
        "log_history": history,
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
