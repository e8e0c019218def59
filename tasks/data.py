"""Tasks for the data half of the loop: sample, label, build splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from stillroom.config import PipelineConfig
from stillroom.sampling import Manifest, sample_documents, write_manifest
from stillroom.splits import build_splits, dataset_hash, split_sizes
from stillroom.storage import make_s3_client, put_jsonl, s3_uri, upload_dir
from stillroom.targets import load_target
from stillroom.teacher import LabelResult, label_manifest, raise_if_stopped, write_labels


def run_key(cfg: PipelineConfig, run_id: str, name: str) -> str:
    return f"{cfg.storage.run_prefix}/{run_id}/{name}"


# Listing and reading are idempotent, so retrying a flaky S3 call is safe.
@task(name="sample", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def sample_task(cfg: PipelineConfig, run_id: str) -> Manifest:
    s3 = make_s3_client(cfg.storage)
    manifest = sample_documents(s3, cfg.storage.bucket, cfg.sampling, load_target(cfg.target))
    write_manifest(s3, cfg.storage.bucket, run_key(cfg, run_id, "manifest.json"), manifest)
    get_run_logger().info("sampling: %s", manifest.counts())
    return manifest


# A retry re-reads the S3 answer cache, so documents already answered are not paid again.
# A run stopped by its failure budget is not retried here: the teacher is failing.
@task(name="label", retries=0, cache_policy=NO_CACHE)
def label_task(cfg: PipelineConfig, run_id: str, manifest: Manifest) -> LabelResult:
    s3 = make_s3_client(cfg.storage)
    result = label_manifest(s3, manifest, load_target(cfg.target), cfg.teacher)
    write_labels(s3, cfg.storage.bucket, run_key(cfg, run_id, "labels"), result)
    get_run_logger().info("labelling: %s", result.counts())
    raise_if_stopped(result)
    return result


@task(name="build-splits", cache_policy=NO_CACHE)
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
