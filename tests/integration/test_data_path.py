"""Seed -> sample -> label against a real moto S3 server and the real replay teacher."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from stillroom import services
from stillroom.config import PipelineConfig, SamplingConfig, load_config
from stillroom.sampling import read_manifest, sample_documents, write_manifest
from stillroom.seeding import seed_bfcl
from stillroom.storage import get_json, iter_objects, make_s3_client, put_bytes, read_jsonl
from stillroom.targets import load_target
from stillroom.teacher import label_manifest

TARGET = load_target("configs/targets/bfcl_tool_call.yaml")


@pytest.fixture
def cfg(moto_server: str, request: pytest.FixtureRequest) -> PipelineConfig:
    bucket = "it-" + request.node.name.replace("_", "-")[:40].lower()
    return load_config("smoke", [f"storage.endpoint_url={moto_server}", f"storage.bucket={bucket}"])


@pytest.fixture
def seeded(cfg: PipelineConfig, tmp_path: Path) -> Iterator[tuple[object, Path]]:
    s3 = make_s3_client(cfg.storage)
    replay = tmp_path / "replay.jsonl"
    seed_bfcl(s3, cfg.storage.bucket, cfg.seed, replay, TARGET.pii)
    yield s3, replay


def teacher_stats(url: str) -> dict[str, int]:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats") as response:
        return json.loads(response.read())


def test_seeded_bucket_is_laid_out_like_request_logs(cfg: PipelineConfig, seeded) -> None:
    s3, _ = seeded
    keys = [o["Key"] for o in iter_objects(s3, cfg.storage.bucket, "requests/")]
    assert len(keys) == 4 * 12 + 4
    assert all(k.startswith(f"requests/{cfg.seed.date}/") and k.endswith(".json") for k in keys)
    document = get_json(s3, cfg.storage.bucket, f"requests/{cfg.seed.date}/simple_python_0.json")
    assert document["tools"][0]["type"] == "function"


def sampling(cfg: PipelineConfig, size: int, seed: int, **extra: object) -> SamplingConfig:
    return SamplingConfig.model_validate(
        cfg.sampling.model_dump() | {"size": size, "seed": seed, **extra}
    )


def test_sampling_counts_reconcile_and_manifest_round_trips(cfg: PipelineConfig, seeded) -> None:
    s3, _ = seeded
    # Asking for more than there is reads everything, so every reject reason shows.
    manifest = sample_documents(s3, cfg.storage.bucket, sampling(cfg, 100, 5), TARGET)
    counts = manifest.counts()
    assert counts["listed"] == 52 and counts["examined"] == 52 and counts["not_examined"] == 0
    assert counts["rejected_by_reason"] == {
        "empty": 1,
        "missing_messages": 1,
        "not_json": 1,
        "not_utf8": 1,
    }
    assert counts["sampled"] == 48
    assert counts["passes"] == 1  # nothing was left unlisted: a second pass could not help
    write_manifest(s3, cfg.storage.bucket, "runs/t/manifest.json", manifest)
    again = read_manifest(s3, cfg.storage.bucket, "runs/t/manifest.json")
    assert again.items == manifest.items and again.rejects == manifest.rejects
    assert again.counts() == counts
    rejects = [r["reason"] for r in read_jsonl(s3, cfg.storage.bucket, "runs/t/rejects.jsonl")]
    assert sorted(rejects) == ["empty", "missing_messages", "not_json", "not_utf8"]


def test_a_small_draw_reads_only_what_it_needs_and_is_reproducible(
    cfg: PipelineConfig, seeded
) -> None:
    s3, _ = seeded
    manifest = sample_documents(s3, cfg.storage.bucket, sampling(cfg, 10, 5), TARGET)
    counts = manifest.counts()
    assert counts["sampled"] == 10 and counts["examined"] < 52
    assert counts["sampled"] + counts["rejected"] + counts["not_examined"] == 52
    again = sample_documents(s3, cfg.storage.bucket, sampling(cfg, 10, 5), TARGET)
    assert again.items == manifest.items  # same seed, same bucket: the same draw


def test_duplicates_and_too_long_documents_are_rejected_with_reasons(
    cfg: PipelineConfig, seeded
) -> None:
    s3, _ = seeded
    bucket = cfg.storage.bucket
    original = get_json(s3, bucket, f"requests/{cfg.seed.date}/simple_python_0.json")
    copy = dict(original, id="copy")
    copy["messages"] = [
        dict(m, content="  " + m["content"].upper() + " ") for m in original["messages"]
    ]
    put_bytes(s3, bucket, "requests/dups/copy.json", json.dumps(copy).encode(), "application/json")
    long = dict(original, id="long")
    long["messages"] = [{"role": "user", "content": "word " * 2000}]
    put_bytes(s3, bucket, "requests/dups/long.json", json.dumps(long).encode(), "application/json")
    manifest = sample_documents(s3, bucket, sampling(cfg, 100, 5), TARGET)
    reasons = {r["key"]: r for r in manifest.rejects}
    dup_keys = {"requests/dups/copy.json", f"requests/{cfg.seed.date}/simple_python_0.json"}
    duplicate = next(r for k, r in reasons.items() if k in dup_keys)
    assert duplicate["reason"] == "duplicate" and duplicate["of"] in dup_keys
    assert reasons["requests/dups/long.json"]["reason"] == "too_long"


def test_stratified_draw_fills_each_quota(cfg: PipelineConfig, seeded) -> None:
    s3, _ = seeded
    stratify = {"by": "field", "field": "source", "default_quota": 3}
    manifest = sample_documents(
        s3, cfg.storage.bucket, sampling(cfg, 100, 5, stratify=stratify), TARGET
    )
    strata = manifest.counts()["strata"]
    assert {s: v["sampled"] for s, v in strata.items()} == {
        f"bfcl/{c}": 3 for c in cfg.seed.categories
    }
    assert manifest.counts()["over_quota"] > 0


def test_labelling_reconciles_and_a_rerun_pays_nothing(
    cfg: PipelineConfig, seeded, tmp_path
) -> None:
    s3, replay = seeded
    manifest = sample_documents(s3, cfg.storage.bucket, sampling(cfg, 40, 1), TARGET)
    # A document edited after sampling must not be labelled under the old hash.
    changed = manifest.items[0]
    put_bytes(s3, cfg.storage.bucket, changed.key, b'{"messages": []}', "application/json")
    # ... and one deleted after sampling is quarantined as unreadable, not a crash.
    deleted = manifest.items[1]
    s3.delete_object(Bucket=cfg.storage.bucket, Key=deleted.key)
    with services.running(services.start_teacher(replay, tmp_path)) as teacher:
        cfg.teacher.base_url = teacher.url
        first = label_manifest(s3, manifest, TARGET, cfg.teacher)
        assert len(first.labelled) + len(first.quarantined) == len(manifest.items)
        reasons = {q["key"]: q["reason"] for q in first.quarantined}
        assert reasons[changed.key] == "changed_since_sampling"
        assert reasons[deleted.key] == "unreadable: NoSuchKey"
        assert first.teacher_calls == len(manifest.items) - 2
        assert teacher_stats(teacher.url)["requests"] == first.teacher_calls
        record = first.labelled[0]
        assert record["output"]["tool_calls"] and record["prompt_tokens"] > 0

        second = label_manifest(s3, manifest, TARGET, cfg.teacher)
        assert second.teacher_calls == 0 and second.cache_hits == first.teacher_calls
        assert teacher_stats(teacher.url)["requests"] == first.teacher_calls  # server agrees
        assert [r["output"] for r in second.labelled] == [r["output"] for r in first.labelled]


def test_unreachable_teacher_quarantines_with_reason(cfg: PipelineConfig, seeded) -> None:
    s3, _ = seeded
    manifest = sample_documents(s3, cfg.storage.bucket, sampling(cfg, 3, 1), TARGET)
    cfg.teacher.base_url = f"http://127.0.0.1:{services.free_port()}/v1"
    cfg.teacher.max_retries = 1
    cfg.teacher.backoff_s = 0.01
    cfg.teacher.timeout_s = 2
    result = label_manifest(s3, manifest, TARGET, cfg.teacher)
    assert len(result.quarantined) == 3 and not result.labelled
    assert {q["reason"] for q in result.quarantined} == {
        "teacher_error: APIConnectionError after 2 attempts"
    }
    assert result.counts()["retries_by_error"] == {"APIConnectionError": 3}
