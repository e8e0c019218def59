"""The accelerate configs in infra/accelerate/ load as accelerate itself reads them."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from stillroom.config import load_config
from stillroom.env import project_root
from stillroom.training import launch_command

CONFIGS = sorted((project_root() / "infra" / "accelerate").glob("*.yaml"))
EXPECTED = {
    "cpu.yaml": ("NO", True),
    "single_gpu.yaml": ("NO", False),
    "multi_gpu_ddp.yaml": ("MULTI_GPU", False),
    "fsdp.yaml": ("FSDP", False),
}


def test_every_config_is_accounted_for() -> None:
    assert {p.name for p in CONFIGS} == set(EXPECTED)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_with_accelerate(path: Path) -> None:
    config = load_config_from_file(str(path))
    distributed, cpu = EXPECTED[path.name]
    assert str(config.distributed_type).split(".")[-1] == distributed
    assert bool(config.use_cpu) is cpu
    # GPU configs compute in bf16: the QLoRA compute dtype the trainer picks on CUDA.
    assert config.mixed_precision == ("no" if cpu else "bf16")
    if distributed == "FSDP":
        # PEFT's frozen base plus trainable adapters cannot be flattened with original params.
        assert config.fsdp_config["fsdp_use_orig_params"] is False


@pytest.mark.parametrize("profile", ["demo", "smoke", "gpu"])
def test_profiles_name_an_existing_config(profile: str) -> None:
    cfg = load_config(profile).training
    command = launch_command(Path("spec.json"), cfg)
    config_file = Path(command[command.index("--config_file") + 1])
    assert config_file.is_file()
    assert command[-4:] == ["-m", "stillroom.training", "--spec", "spec.json"]


def test_torchrun_launch_splits_threads_between_processes() -> None:
    from stillroom.training import training_env

    cfg = load_config("smoke", ["training.launcher=torchrun", "training.processes=2"]).training
    command = launch_command(Path("spec.json"), cfg)
    assert command[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc-per-node=2" in command
    assert training_env(cfg)["OMP_NUM_THREADS"] == str(max(1, cfg.threads // 2))
