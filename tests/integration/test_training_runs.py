"""The trainer as the pipeline launches it: a subprocess that can be killed and relaunched.

Each test trains the tiny model for a few dozen steps through `launch_command`, the same
command line a Prefect worker runs.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from stillroom.config import SplitConfig, TrainingConfig
from stillroom.models import resolve_base_model
from stillroom.splits import build_splits
from stillroom.training import (
    CHECKPOINTS,
    TrainSpec,
    launch_command,
    launch_training,
    training_env,
    write_spec,
)

N_RECORDS = 60


def record(i: int) -> dict:
    # Varied lengths, so padding-free batches really hold examples of different sizes.
    return {
        "id": f"d{i}",
        "sha256": f"h{i}",
        "messages": [{"role": "user", "content": f"square with side {i}" + " please" * (i % 6)}],
        "tools": [{"type": "function", "function": {"name": "area", "parameters": {}}}],
        "output": {"tool_calls": [{"name": "area", "arguments": {"side": i}}]},
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("training-inputs")
    dataset = build_splits([record(i) for i in range(N_RECORDS)], SplitConfig(seed=0))
    dataset.save_to_disk(str(root / "ds"))
    return root / "ds", resolve_base_model("tiny", root / "models")


def make_spec(inputs: tuple[Path, Path], out: Path, **training: object) -> TrainSpec:
    settings = {"max_steps": 24, "batch_size": 4, "logging_steps": 2, "eval_steps": 4}
    return TrainSpec(
        dataset_dir=str(inputs[0]),
        base_model_dir=str(inputs[1]),
        output_dir=str(out),
        system_prompt="Answer with JSON.",
        quantization="none",
        training=TrainingConfig(**(settings | training)),
    )


def eval_losses(metrics: dict) -> dict[int, float]:
    return {e["step"]: e["eval_loss"] for e in metrics["log_history"] if "eval_loss" in e}


def kill_after_checkpoint(spec: TrainSpec, step: int) -> None:
    """Start training and SIGKILL its whole process group once checkpoint-`step` is saved."""
    command = launch_command(write_spec(spec), spec.training)
    checkpoint = Path(spec.output_dir) / CHECKPOINTS / f"checkpoint-{step}" / "trainer_state.json"
    with (Path(spec.output_dir) / "train.log").open("a") as log:
        proc = subprocess.Popen(
            command, env=training_env(spec.training), stdout=log, stderr=log, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 300
            while not checkpoint.exists():
                assert proc.poll() is None, "training ended before it could be killed"
                assert time.monotonic() < deadline, "no checkpoint within 300 s"
                time.sleep(0.02)
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (Path(spec.output_dir) / "metrics.json").exists(), "it finished before the kill"


def test_killed_run_resumes_from_its_last_checkpoint_and_ends_where_an_unbroken_one_does(
    inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    unbroken = launch_training(make_spec(inputs, tmp_path / "unbroken", max_steps=40))
    spec = make_spec(inputs, tmp_path / "killed", max_steps=40)
    kill_after_checkpoint(spec, step=8)

    resumed = launch_training(spec)
    # The relaunch picked up a checkpoint rather than starting again, and finished the plan.
    assert resumed["resumed_from"] is not None
    resumed_step = int(resumed["resumed_from"].removeprefix("checkpoint-"))
    assert 8 <= resumed_step < 40
    assert resumed["steps"] == unbroken["steps"] == 40
    # Same data order, same RNG state restored: the curves after the resume are the unbroken
    # run's. Checkpoint reload is exact in fp32, so only summation noise is allowed.
    assert eval_losses(resumed).keys() == eval_losses(unbroken).keys()
    for step, loss in eval_losses(unbroken).items():
        assert math.isclose(eval_losses(resumed)[step], loss, rel_tol=1e-4), step
    assert math.isclose(resumed["eval_loss_after"], unbroken["eval_loss_after"], rel_tol=1e-4)
    # "Before" is the untrained adapter's loss from the first attempt, not a half-trained one.
    assert resumed["eval_loss_before"] == unbroken["eval_loss_before"]
    assert resumed["eval_loss_after"] < resumed["eval_loss_before"]


def test_early_stopping_keeps_the_best_checkpoint(
    inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    # No later validation can beat the first by 100 nats: patience 1 stops at the second.
    metrics = launch_training(
        make_spec(
            inputs, tmp_path / "out", early_stopping_patience=1, early_stopping_threshold=100.0
        )
    )
    assert metrics["stopped_early"] and metrics["steps"] == 8 < metrics["steps_planned"]
    # What was saved is the best validated checkpoint's model, whichever step that was.
    losses = eval_losses(metrics)
    best_step = min((4, 8), key=lambda step: losses[step])
    assert metrics["best_checkpoint"] == f"checkpoint-{best_step}"
    assert metrics["eval_loss_after"] == pytest.approx(losses[best_step], rel=1e-6)
    assert (Path(metrics["adapter_dir"]) / "adapter_model.safetensors").is_file()
    assert (Path(metrics["merged_dir"]) / "model.safetensors").is_file()


def test_torchrun_gives_two_process_data_parallel_on_cpu(
    inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    steps, batch = 4, 4
    spec = make_spec(
        inputs,
        tmp_path / "ddp",
        launcher="torchrun",
        processes=2,
        max_steps=steps,
        batch_size=batch,
        eval_steps=3,
    )
    metrics = launch_training(spec)
    assert metrics["processes"] == 2
    assert metrics["threads"] == 1  # two cores shared out, not oversubscribed
    # Two ranks each take `batch` examples a step, so an epoch has half the steps.
    steps_per_epoch = math.ceil(metrics["train_examples"] / (batch * 2))
    assert metrics["epochs"] == pytest.approx(steps / steps_per_epoch, abs=1e-3)
    log = (tmp_path / "ddp" / "train.log").read_text()
    assert log.count("training LoRA") == 2  # one line per rank
    assert json.loads((tmp_path / "ddp" / "metrics.json").read_text())["steps"] == steps


@pytest.mark.parametrize(
    "base",
    [
        "tiny-tools",
        pytest.param("qwen2.5-coder-0.5b", marks=pytest.mark.slow),  # 0.5B on 2 cores
    ],
)
def test_a_tools_template_family_trains_on_its_own_format(
    base: str, inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    """Qwen-style bases see full tool schemas and answer in <tool_call> blocks: the trainer
    takes both from the one rendering function, and the outputs keep that template."""
    from stillroom.env import state_dir
    from stillroom.models import load_tokenizer
    from stillroom.prompts import render_example, supports_tools

    folder = resolve_base_model(base, state_dir() / "models")
    spec = make_spec(inputs, tmp_path / "out", max_steps=2, eval_steps=2)
    spec.base_model_dir = str(folder)
    metrics = launch_training(spec)
    assert metrics["steps"] == 2 and metrics["eval_loss_after"] < metrics["eval_loss_before"]
    merged = load_tokenizer(Path(metrics["merged_dir"]))
    assert supports_tools(merged)
    row = {"messages": json.dumps(record(3)["messages"]), "tools": json.dumps(record(3)["tools"])}
    row["answer"] = json.dumps([{"name": "area", "arguments": {"side": 3}}])
    prompt, completion = render_example(merged, "Answer with JSON.", row)
    assert '"name": "area"' in prompt and completion.startswith("<tool_call>")
