"""Tasks for the data half of the loop: sample, label, build splits."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS
from prefect.concurrency.asyncio import concurrency

from stillroom.config import PipelineConfig, TeacherConfig
from stillroom.sampling import Manifest, sample_documents, write_manifest
from stillroom.splits import build_splits, dataset_hash, split_sizes
from stillroom.storage import make_s3_client, put_jsonl, s3_uri, upload_dir
from stillroom.targets import load_target
from stillroom.teacher import (
    LabelResult,
    SlotFactory,
    label_manifest,
    raise_if_stopped,
    write_labels,
)

log = logging.getLogger("stillroom.tasks")


def run_key(cfg: PipelineConfig, run_id: str, name: str) -> str:
    return f"{cfg.storage.run_prefix}/{run_id}/{name}"


# Stage results are persisted and cached on a hash of the task's inputs, run id included: a
# retried flow run (same run id) picks them up instead of sampling and labelling again,
# while a new run (new id) never sees another run's sample.
STAGE_CACHE = {"cache_policy": INPUTS, "persist_result": True}


# Listing and reading are idempotent, so retrying a flaky S3 call is safe.
@task(name="sample", retries=2, retry_delay_seconds=5, **STAGE_CACHE)
def sample_task(cfg: PipelineConfig, run_id: str) -> Manifest:
    s3 = make_s3_client(cfg.storage)
    manifest = sample_documents(s3, cfg.storage.bucket, cfg.sampling, load_target(cfg.target))
    write_manifest(s3, cfg.storage.bucket, run_key(cfg, run_id, "manifest.json"), manifest)
    get_run_logger().info("sampling: %s", manifest.counts())
    return manifest


# A retry re-reads the S3 answer cache, so documents already answered are not paid again.
# A run stopped by its failure budget is not retried here: the teacher is failing.
@task(name="label", retries=0, **STAGE_CACHE)
def label_task(cfg: PipelineConfig, run_id: str, manifest: Manifest) -> LabelResult:
    s3 = make_s3_client(cfg.storage)
    slot = teacher_slot(cfg.teacher)
    result = label_manifest(s3, manifest, load_target(cfg.target), cfg.teacher, slot)
    write_labels(s3, cfg.storage.bucket, run_key(cfg, run_id, "labels"), result)
    get_run_logger().info("labelling: %s", result.counts())
    raise_if_stopped(result)
    return result


def teacher_slot(cfg: TeacherConfig) -> SlotFactory:
    """One slot of the global teacher limit per call in flight, shared by every run.

    The limit is created with `global_limit_slots` if no one has made it yet; an existing
    limit (set with `prefect gcl`) is left as its owner configured it.
    """
    if cfg.global_limit is None:
        return nullcontext
    ensure_global_limit(cfg.global_limit, cfg.global_limit_slots)
    name = cfg.global_limit
    return lambda: concurrency(name, occupy=1, strict=True)


def ensure_global_limit(name: str, slots: int) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=slots)
                )
                log.info("created global concurrency limit %s with %d slots", name, slots)
            except ObjectAlreadyExists:
                pass  # another run created it between our read and our create


@task(name="build-splits", **STAGE_CACHE)
def build_task(
    cfg: PipelineConfig, run_id: str, labels: LabelResult, out_dir: Path
) -> dict[str, Any]:
    dataset = build_splits(labels.labelled, cfg.splits)
    dataset.save_to_disk(str(out_dir))
    s3 = make_s3_client(cfg.storage)
    # The saved DatasetDict is what a training worker on another machine downloads.
    uri = s3_uri(cfg.storage.bucket, run_key(cfg, run_id, "dataset"))
    upload_dir(s3, out_dir, uri)
    for name, split in dataset.items():
        put_jsonl(
            s3, cfg.storage.bucket, run_key(cfg, run_id, f"splits/{name}.jsonl"), split.to_list()
        )
    info = {
        "path": str(out_dir),
        "uri": uri,
        "hash": dataset_hash(dataset),
        "sizes": split_sizes(dataset),
    }
    get_run_logger().info("splits: %s (hash %s)", info["sizes"], info["hash"][:12])
    return info
