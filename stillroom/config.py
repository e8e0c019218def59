"""Typed pipeline configuration: one pydantic model per stage, nested in `PipelineConfig`.

Loaded once at a flow's entry from `configs/base.yaml`, then a profile from
`configs/profiles/`, then dotted overrides (`training.max_steps=4`). Each later layer holds
only its differences, so `base.yaml` is the one place every default is visible.
"""

from __future__ import annotations

import argparse
import copy
import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from stillroom.env import project_root


class Section(BaseModel):
    """Unknown keys are errors: a typo in a YAML file must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class StorageConfig(Section):
    endpoint_url: str | None = Field(
        None, description="S3 API endpoint; None means AWS itself. Locally the moto server."
    )
    region: str = Field("us-east-1", description="S3 region passed to boto3.")
    bucket: str = Field("stillroom", description="Bucket holding documents, manifests, labels.")
    run_prefix: str = Field(
        "runs", description="Key prefix under which each run writes its manifest and labels."
    )
    max_connections: int = Field(64, description="HTTP connections kept open to S3.")


class SeedConfig(Section):
    categories: list[str] = Field(
        default_factory=lambda: ["simple_python", "multiple", "parallel", "parallel_multiple"],
        description="BFCL single-turn, non-live categories written as demo documents.",
    )
    per_category: int | None = Field(
        None, description="Cap of cases per category (None: all of them)."
    )
    date: str = Field("2026-11-30", description="Date partition in requests/<date>/<id>.json.")
    bad_documents: int = Field(
        4, description="Malformed documents added on purpose, so rejection paths always run."
    )
    teacher_faults: list[str] = Field(
        default_factory=list,
        description="Faults the local teacher injects, e.g. `p_429=0.05` (teacher_server.Faults).",
    )


class StratifyConfig(Section):
    by: Literal["key", "field"] = Field(
        description="'key': a regex group of the object key (a date partition, a source "
        "prefix), known from the listing alone; 'field': a dotted path into the document."
    )
    pattern: str | None = Field(
        None, description="For by=key: regex whose first group is the stratum."
    )
    field: str | None = Field(
        None, description="For by=field: dotted path, e.g. `source` or `tools.0.function.name`."
    )
    quotas: dict[str, int] = Field(
        default_factory=dict, description="Documents drawn at most, per named stratum."
    )
    default_quota: int | None = Field(
        None, description="Cap for strata not named in `quotas` (None: only `size` caps)."
    )


class DedupSettings(Section):
    exact: bool = Field(True, description="Drop documents whose normalised text repeats.")
    near: bool = Field(True, description="Drop near-duplicates (MinHash LSH over shingles).")
    threshold: float = Field(
        0.95,
        description="Estimated Jaccard similarity that counts as near. On the demo data 0.9 "
        "drops a BFCL question re-asked with distractor tools (a different task); 0.95 doesn't.",
    )
    same_numbers: bool = Field(
        True, description="A near match must also have the same numbers: 10000 vs 20000 differ."
    )
    num_perm: int = Field(128, description="MinHash permutations: more is sharper and slower.")
    shingle_size: int = Field(5, description="Character shingle length.")


class SamplingConfig(Section):
    prefix: str = Field("requests/", description="S3 prefix listed for candidate documents.")
    size: int = Field(300, description="Documents drawn; fewer if fewer usable ones exist.")
    seed: int = Field(13, description="Seed of the draw; the same seed draws the same keys.")
    oversample: float = Field(
        1.3,
        description="Candidates kept while listing, as a multiple of `size`: rejects and "
        "duplicates are replaced from them. Doubled (and the prefix listed again) if short.",
    )
    read_workers: int = Field(8, description="Documents read from S3 concurrently.")
    max_prompt_tokens: int = Field(
        384, description="Longer student prompts are rejected as too_long (context budget)."
    )
    chars_per_token: float = Field(
        3.5, description="Estimate used for max_prompt_tokens; measured on the demo data."
    )
    dedup: DedupSettings = Field(default_factory=DedupSettings)
    stratify: StratifyConfig | None = Field(None, description="None: one uniform draw.")


class Price(Section):
    input_per_1m: float = Field(description="USD per million prompt tokens.")
    output_per_1m: float = Field(description="USD per million completion tokens.")


class TeacherConfig(Section):
    base_url: str = Field(
        "http://127.0.0.1:8765/v1", description="OpenAI-compatible endpoint of the teacher."
    )
    model: str = Field("replay-teacher", description="Teacher model name sent to the API.")
    api_key_env: str = Field(
        "STILLROOM_TEACHER_API_KEY",
        description="Name of the env var holding the API key; the key itself is never in config.",
    )
    concurrency: int = Field(8, description="Requests in flight at once, in this run.")
    global_limit: str | None = Field(
        "teacher-calls",
        description="Prefect global concurrency limit every run's teacher calls share, so "
        "runs started together stay under the provider's limits; None: per-run only.",
    )
    global_limit_slots: int = Field(
        16, ge=1, description="Slots of `global_limit` when a run has to create it."
    )
    requests_per_minute: float | None = Field(
        None, description="Provider's request-rate limit (None: unlimited)."
    )
    tokens_per_minute: float | None = Field(
        None, description="Provider's token-rate limit, prompt + max_tokens (None: unlimited)."
    )
    timeout_s: float = Field(60.0, description="Per-request timeout.")
    max_retries: int = Field(
        5, description="Retries per request on 429, 5xx, timeouts and connection errors."
    )
    backoff_s: float = Field(0.5, description="First backoff; doubles per retry, full jitter.")
    backoff_max_s: float = Field(30.0, description="Backoff ceiling.")
    failure_budget: int = Field(
        20,
        description="Documents that may fail for good (retries spent) before the run stops "
        "instead of paying on; the rest are counted as skipped.",
    )
    repair: bool = Field(
        True, description="Send an invalid answer back once with its error before quarantine."
    )
    temperature: float = Field(0.0, description="Teacher sampling temperature.")
    max_tokens: int = Field(512, description="Completion cap per request.")
    prices: dict[str, Price] = Field(
        default_factory=dict, description="USD per million tokens, by teacher model name."
    )
    progress_every_s: float = Field(
        10.0, description="Seconds between progress lines when not on a terminal."
    )


class SplitConfig(Section):
    validation_fraction: float = Field(0.1, description="Share of documents for validation.")
    test_fraction: float = Field(0.2, description="Share held out for evaluation.")
    seed: int = Field(7, description="Seed of the split shuffle.")


class StudentConfig(Section):
    base_model: str = Field(
        "smollm2-135m",
        description="A packaged model ('smollm2-135m', 'qwen2.5-coder-0.5b'), a test model "
        "built locally ('tiny', 'tiny-tools'), a Hugging Face id already in the local cache, "
        "or a local model folder (safetensors only).",
    )
    quantization: Literal["auto", "none", "nf4"] = Field(
        "auto", description="auto: 4-bit NF4 (QLoRA) on CUDA, fp32 LoRA on CPU."
    )


class LoraConfig(Section):
    r: int = Field(16, description="LoRA rank.")
    alpha: int = Field(32, description="LoRA alpha; alpha/r = 2 is the common starting ratio.")
    dropout: float = Field(0.05, description="LoRA dropout.")
    target_modules: list[str] | str = Field(
        "all-linear", description="Modules adapted; 'all-linear' follows the QLoRA paper."
    )
    top_layers: int | None = Field(
        None,
        description="Adapt only the last N transformer layers (None: all). Backward then stops "
        "below them: on 2 CPU cores SmolLM2 trains 110 tokens/s with 15 of 30 layers vs 80.",
    )


class TrainingConfig(Section):
    accelerate_config: str = Field(
        "infra/accelerate/cpu.yaml", description="accelerate config file, relative to the repo."
    )
    launcher: Literal["accelerate", "torchrun"] = Field(
        "accelerate",
        description="accelerate: what GPU nodes run. torchrun: real multi-process DDP on CPU "
        "(accelerate's --cpu with several processes silently runs one).",
    )
    processes: int = Field(1, ge=1, description="torchrun only: DDP processes on this node.")
    retries: int = Field(
        1, ge=0, description="Relaunches after a crash; each resumes from the last checkpoint."
    )
    deployment: str | None = Field(
        None,
        description="Prefect deployment ('train/<name>') that runs training on its own work "
        "pool, e.g. GPU workers; None: the train flow runs inside the distill run.",
    )
    epochs: float = Field(2.0, description="Passes over the train split (max_steps overrides).")
    max_steps: int = Field(-1, description="Hard step cap; -1 means use epochs.")
    learning_rate: float = Field(2e-4, description="LoRA learning rate (QLoRA paper range).")
    batch_size: int = Field(4, description="Per-device examples per step.")
    batching: Literal["padding_free", "packed", "padded"] = Field(
        "padding_free",
        description="padding_free: a batch is its examples end to end, no pad tokens. packed: "
        "also fills each row to max_length (best-fit decreasing). padded: pad to the longest.",
    )
    eval_batch_size: int = Field(8, description="Per-device batch size for validation loss.")
    grad_accum: int = Field(1, description="Gradient accumulation steps.")
    max_length: int = Field(
        512,
        description="Upper bound on tokens per example; the length used is the longest "
        "rendered train example under it. Longer examples are dropped, never cut.",
    )
    warmup_ratio: float = Field(0.05, description="Linear warm-up share of the schedule.")
    logging_steps: int = Field(5, description="Steps between loss log lines.")
    eval_steps: int = Field(
        20, ge=1, description="Steps between validation passes (and checkpoints)."
    )
    early_stopping_patience: int | None = Field(
        3, description="Stop after this many validations without improvement; None: never."
    )
    early_stopping_threshold: float = Field(
        0.0, description="Least drop in validation loss that counts as an improvement."
    )
    save_total_limit: int = Field(
        2, ge=1, description="Checkpoints kept on disk (the best is always among them)."
    )
    bf16: Literal["auto", "on", "off"] = Field(
        "auto",
        description="bf16 autocast. auto: on CUDA, and on CPUs with native bf16 "
        "(avx512_bf16/AMX); elsewhere bf16 is emulated and slower than fp32.",
    )
    threads: int = Field(
        2, description="torch/OMP threads per node for CPU training; set, not inherited."
    )
    seed: int = Field(42, description="Trainer seed.")
    lora: LoraConfig = Field(default_factory=LoraConfig)


class EvalConfig(Section):
    max_new_tokens: int = Field(
        160,
        description="Upper bound of the generation cap; the cap itself is fitted to the "
        "longest teacher answer in the train split, times `answer_headroom`.",
    )
    answer_headroom: float = Field(
        1.25, description="Generation cap = longest training answer (tokens) x this."
    )
    batch_size: int = Field(
        32,
        description="Prompts generated together; CPU decoding is memory-bound, so wide is cheap.",
    )
    evaluate_base: bool = Field(
        True, description="Also score the untrained base model on the same test set."
    )
    evaluate_champion: bool = Field(
        True, description="Also score the current champion on the same test set."
    )
    latency_samples: int = Field(
        8, description="Requests timed one at a time for the p50/p95 latency figures."
    )
    student_price_per_hour_usd: float = Field(
        0.10, description="What a machine serving the student costs per hour (CPU instance)."
    )
    worst_examples: int = Field(10, description="Misses listed in the evaluation report.")


class RegistryConfig(Section):
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; None: MLFLOW_TRACKING_URI from the environment, "
        "else a sqlite store in the state folder.",
    )
    experiment: str = Field("stillroom-distill", description="MLflow experiment name.")
    model_name: str = Field("bfcl-tool-call-student", description="Registered model name.")
    min_accuracy: float = Field(
        0.5,
        description="Gate: the candidate's primary metric (agreement with the teacher on the "
        "held-out test set) must reach this.",
    )
    min_margin: float = Field(
        0.0,
        description="Gate: gain of the primary metric over the champion, both scored on this "
        "run's test set, must be at least this. Exactly the margin passes: at 0.0 a tie goes "
        "to the newer model, trained on fresher data.",
    )
    max_latency_ms: float | None = Field(
        None,
        description="Gate: p95 latency per request (metric `latency_p95_ms`) must not exceed "
        "this; a candidate without the metric fails. None: no latency gate.",
    )
    review: Literal["auto", "manual"] = Field(
        "auto",
        description="auto: passing every gate makes a candidate champion. manual: a person "
        "approves or rejects it (`stillroom review`); the gates still block automatic moves.",
    )
    review_timeout_s: int = Field(
        86_400, description="review=manual: how long a run waits paused for a decision."
    )


class WatchConfig(Section):
    """The drift watch (`flows/watch.py`): the champion scored on fresh teacher labels."""

    size: int = Field(
        40, ge=1, description="Recent documents sampled and labelled per watch: a small bill."
    )
    since_days: int | None = Field(
        7,
        ge=1,
        description="Recent = a date partition of the key (`date_pattern`) within the last N "
        "days, today (UTC) included; None: the whole sampling prefix.",
    )
    date_pattern: str = Field(
        r"/(\d{4}-\d{2}-\d{2})/",
        description="Regex whose group is a key's ISO date, as in requests/<date>/<id>.json.",
    )
    min_agreement: float = Field(
        0.5,
        description="Trigger when the champion's primary metric on the fresh labels falls "
        "below this.",
    )
    min_scored: int = Field(
        10,
        ge=1,
        description="Fewer freshly labelled documents than this: agreement is logged but not "
        "judged (a handful of misses is noise, not drift).",
    )
    new_documents_trigger: int | None = Field(
        1000,
        ge=1,
        description="Trigger when this many objects arrived under the sampling prefix since "
        "the champion was registered (S3 LastModified); None: off.",
    )
    trigger_without_champion: bool = Field(
        False,
        description="No champion yet: start distill (True) or only record it (False: on a "
        "schedule, every tick would start one until a candidate passes the gates).",
    )
    cooldown_hours: float = Field(
        12.0,
        ge=0,
        description="No trigger while a run of `deployment` is unfinished or was created this "
        "recently: one retrain at a time.",
    )
    deployment: str = Field("distill/on-demand", description="Deployment a trigger starts.")
    distill_profile: str | None = Field(
        None, description="`profile` parameter of the started run; None: the deployment's own."
    )
    distill_overrides: list[str] | None = Field(
        None, description="`overrides` parameter of the started run; None: the deployment's own."
    )
    experiment: str = Field(
        "stillroom-watch", description="MLflow experiment of the agreement series."
    )


class PipelineConfig(Section):
    profile: str = Field("base", description="Name of the profile this config was built from.")
    target: str = Field(
        "configs/targets/bfcl_tool_call.yaml", description="Target YAML, relative to the repo."
    )
    storage: StorageConfig = Field(default_factory=StorageConfig)
    seed: SeedConfig = Field(default_factory=SeedConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    splits: SplitConfig = Field(default_factory=SplitConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvalConfig = Field(default_factory=EvalConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    watch: WatchConfig = Field(default_factory=WatchConfig)


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Merge `extra` into a copy of `base`, recursing into nested mappings."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(item: str) -> dict[str, Any]:
    """`training.max_steps=4` -> {"training": {"max_steps": 4}}; values are parsed as YAML."""
    if "=" not in item:
        raise ValueError(f"override {item!r} is not of the form dotted.key=value")
    dotted, raw = item.split("=", 1)
    value: Any = yaml.safe_load(raw) if raw else ""
    if isinstance(value, datetime.date):
        value = raw.strip()  # no field holds a date object: `seed.date=2026-12-04` is text
    for part in reversed(dotted.strip().split(".")):
        value = {part: value}
    return value


def read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping at top level")
    return data


def load_config(
    profile: str | None = None,
    overrides: list[str] | None = None,
    configs_dir: Path | None = None,
) -> PipelineConfig:
    """Build the pipeline config: base.yaml, then the profile, then dotted overrides."""
    configs_dir = configs_dir or project_root() / "configs"
    data = read_yaml(configs_dir / "base.yaml")
    if profile:
        profile_path = configs_dir / "profiles" / f"{profile}.yaml"
        if not profile_path.exists():
            known = sorted(p.stem for p in (configs_dir / "profiles").glob("*.yaml"))
            raise FileNotFoundError(f"no profile {profile!r}; known profiles: {known}")
        data = deep_merge(data, read_yaml(profile_path))
        data["profile"] = profile
    for item in overrides or []:
        data = deep_merge(data, parse_override(item))
    return PipelineConfig.model_validate(data)


def resolve_path(relative: str) -> Path:
    """Config paths are relative to the repo root unless absolute."""
    path = Path(relative)
    return path if path.is_absolute() else project_root() / path


def profile_parser(
    description: str, default_profile: str | None = "demo"
) -> argparse.ArgumentParser:
    """The command line every entry point shares: `--profile NAME` plus dotted overrides."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--profile", default=default_profile, help="a file in configs/profiles/")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sampling.size=50")
    return parser
