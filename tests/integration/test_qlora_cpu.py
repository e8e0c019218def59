"""The QLoRA path (4-bit NF4 base through bitsandbytes) runs on CPU too, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from stillroom.config import SplitConfig, TrainingConfig
from stillroom.models import resolve_base_model
from stillroom.splits import build_splits
from stillroom.training import TrainSpec, launch_training


def record(i: int) -> dict:
    return {
        "id": f"d{i}",
        "sha256": f"h{i}",
        "messages": [{"role": "user", "content": f"square with side {i}"}],
        "tools": [{"type": "function", "function": {"name": "area", "parameters": {}}}],
        "output": {"tool_calls": [{"name": "area", "arguments": {"side": i}}]},
    }


def test_nf4_training_through_accelerate_on_cpu(tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    build_splits([record(i) for i in range(30)], SplitConfig(seed=0)).save_to_disk(
        str(tmp_path / "ds")
    )
    spec = TrainSpec(
        dataset_dir=str(tmp_path / "ds"),
        base_model_dir=str(resolve_base_model("tiny", tmp_path / "models")),
        output_dir=str(tmp_path / "out"),
        system_prompt="Answer with JSON.",
        quantization="nf4",
        training=TrainingConfig(
            max_steps=4, batch_size=4, logging_steps=1, eval_steps=2, learning_rate=2e-3
        ),
    )
    metrics = launch_training(spec)
    assert metrics["mode"] == "QLoRA (4-bit NF4 base, fp32 compute)"
    assert metrics["steps"] == 4
    # Through the validation passes (no-grad forwards) and on: the loss still goes down.
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]
    merged = Path(metrics["merged_dir"])
    assert (merged / "model.safetensors").is_file()  # merged into a full-precision copy
