"""Seed -> sample -> label against a real moto S3 server and the real replay teacher."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from stillroom import services
from stillroom.config import PipelineConfig, load_config
from stillroom.sampling import Manifest, sample_documents, write_manifest
from stillroom.seeding import seed_bfcl
from stillroom.storage import get_json, iter_objects, make_s3_client, put_bytes
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
    seed_bfcl(s3, cfg.storage.bucket, cfg.seed, replay)
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


def test_sampling_counts_reconcile_and_manifest_round_trips(cfg: PipelineConfig, seeded) -> None:
    s3, _ = seeded
    manifest = sample_documents(s3, cfg.storage.bucket, "requests/", 30, 5, TARGET, workers=4)
    counts = manifest.counts()
    assert counts["listed"] == 52 and counts["rejected"] == 4 and counts["valid"] == 48
    assert counts["sampled"] == 30
    assert counts["rejected_by_reason"] == {
        "empty": 1,
        "missing_messages": 1,
        "not_json": 1,
        "not_utf8": 1,
    }
    write_manifest(s3, cfg.storage.bucket, "runs/t/manifest.json", manifest)
    again = Manifest.from_json(get_json(s3, cfg.storage.bucket, "runs/t/manifest.json"))
    assert again.items == manifest.items
    # Same seed, same bucket: the same draw.
    assert (
        sample_documents(s3, cfg.storage.bucket, "requests/", 30, 5, TARGET).items == manifest.items
    )


def test_labelling_reconciles_and_a_rerun_pays_nothing(
    cfg: PipelineConfig, seeded, tmp_path
) -> None:
    s3, replay = seeded
    manifest = sample_documents(s3, cfg.storage.bucket, "requests/", 40, 1, TARGET)
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
    manifest = sample_documents(s3, cfg.storage.bucket, "requests/", 3, 1, TARGET)
    cfg.teacher.base_url = f"http://127.0.0.1:{services.free_port()}/v1"
    cfg.teacher.max_retries = 0
    cfg.teacher.timeout_s = 2
    result = label_manifest(s3, manifest, TARGET, cfg.teacher)
    assert len(result.quarantined) == 3 and not result.labelled
    assert {q["reason"] for q in result.quarantined} == {"teacher_error: APIConnectionError"}
