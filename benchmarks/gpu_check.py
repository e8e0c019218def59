"""QLoRA on a CUDA machine: a few dozen steps per packaged student on the demo data.

    make gpu-check                      # or: .venv/bin/python benchmarks/gpu_check.py --steps 40

For each model (SmolLM2-135M and the larger packaged Qwen2.5-Coder-0.5B) it trains a 4-bit
NF4 base with bf16 LoRA through `accelerate launch` (infra/accelerate/single_gpu.yaml), the
path a GPU work-pool worker takes, and prints real tokens/s, peak GPU memory and loss.
Exits 2 when there is no CUDA device, so it never passes for a CPU run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from stillroom.env import apply_offline_env, state_dir

apply_offline_env()

MODELS = ("smollm2-135m", "qwen2.5-coder-0.5b")


def check_model(name: str, dataset: Path, out: Path, steps: int, batch: int) -> dict:
    from stillroom.config import TrainingConfig
    from stillroom.models import resolve_base_model
    from stillroom.targets import load_target
    from stillroom.training import TrainSpec, launch_training

    spec = TrainSpec(
        dataset_dir=str(dataset),
        base_model_dir=str(resolve_base_model(name, state_dir() / "models")),
        output_dir=str(out),
        system_prompt=load_target("configs/targets/bfcl_tool_call.yaml").student_system_prompt,
        quantization="nf4",
        training=TrainingConfig(
            accelerate_config="infra/accelerate/single_gpu.yaml",
            max_steps=steps,
            batch_size=batch,
            learning_rate=2e-4,
            logging_steps=5,
            eval_steps=max(1, steps // 2),
            early_stopping_patience=None,
            threads=8,
        ),
    )
    return launch_training(spec)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; nothing was run", file=sys.stderr)
        sys.exit(2)
    from stillroom.config import SplitConfig
    from stillroom.seeding import labelled_cases
    from stillroom.splits import build_splits

    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_splits(labelled_cases(800, seed=0), SplitConfig(seed=7)).save_to_disk(
            str(root / "ds")
        )
        for name in args.models.split(","):
            m = check_model(name, root / "ds", root / name, args.steps, args.batch_size)
            print(
                f"{name}: {m['mode']}, {m['steps']} steps, {m['train_tokens_per_second']:.0f} "
                f"real tokens/s, peak GPU {m['peak_memory_mib']:.0f} MiB, train loss "
                f"{m['train_loss']:.3f}, val loss {m['eval_loss_before']:.3f} -> "
                f"{m['eval_loss_after']:.3f}"
            )
            print(json.dumps({k: v for k, v in m.items() if k != "log_history"}))


if __name__ == "__main__":
    main()
