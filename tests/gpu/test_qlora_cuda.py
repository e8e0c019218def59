"""QLoRA on CUDA: the 4-bit NF4 path the trainer takes on a GPU worker.

Skipped cleanly without CUDA (`-m gpu` selects it; the default run deselects it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_trainer_takes_the_qlora_path_and_learns(tmp_path: Path) -> None:
    from stillroom.config import SplitConfig, TrainingConfig
    from stillroom.models import resolve_base_model
    from stillroom.splits import build_splits
    from stillroom.training import TrainSpec, launch_training

    records = [
        {
            "id": f"d{i}",
            "sha256": f"h{i}",
            "messages": [{"role": "user", "content": f"area of a square with side {i}"}],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "area",
                        "parameters": {
                            "type": "object",
                            "properties": {"side": {"type": "integer"}},
                        },
                    },
                }
            ],
            "output": {"tool_calls": [{"name": "area", "arguments": {"side": i}}]},
        }
        for i in range(60)
    ]
    build_splits(records, SplitConfig(seed=0)).save_to_disk(str(tmp_path / "ds"))
    base = resolve_base_model("smollm2-135m", tmp_path / "models")
    metrics = launch_training(
        TrainSpec(
            dataset_dir=str(tmp_path / "ds"),
            base_model_dir=str(base),
            output_dir=str(tmp_path / "out"),
            system_prompt="Answer with JSON.",
            quantization="auto",
            training=TrainingConfig(
                accelerate_config="infra/accelerate/single_gpu.yaml",
                max_steps=20,
                batch_size=8,
                grad_accum=1,
                learning_rate=1e-3,
                logging_steps=5,
            ),
        )
    )
    print(json.dumps({k: v for k, v in metrics.items() if k != "log_history"}, indent=2))
    assert metrics["mode"].startswith("QLoRA") and metrics["device"] == "cuda"
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]
