"""Labelling against the real local teacher with faults on, and a run killed midway.

The teacher server keeps a provider's books (`/stats`): answers delivered, tokens billed,
and `repeats` (the same request answered twice). A working cache means the client's own
spend equals what the server billed, and nothing is ever delivered twice.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from stillroom import services
from stillroom.config import PipelineConfig, load_config
from stillroom.sampling import sample_documents
from stillroom.seeding import seed_bfcl
from stillroom.storage import get_json, make_s3_client
from stillroom.targets import load_target
from stillroom.teacher import LabellingStopped, label_manifest, raise_if_stopped

TARGET = load_target("configs/targets/bfcl_tool_call.yaml")
MIXED_FAULTS = [  # about 22% of requests go wrong, in every way the teacher knows
    "p_429=0.05",
    "retry_after_s=0.2",
    "p_5xx=0.05",
    "p_timeout=0.04",
    "hang_s=2.5",
    "p_malformed=0.04",
    "p_schema_invalid=0.04",
    "seed=11",
]


@pytest.fixture
def cfg(moto_server: str, request: pytest.FixtureRequest) -> PipelineConfig:
    bucket = "lf-" + request.node.name.replace("_", "-")[:40].lower()
    return load_config(
        "smoke",
        [
            f"storage.endpoint_url={moto_server}",
            f"storage.bucket={bucket}",
            "teacher.backoff_s=0.05",
            "teacher.backoff_max_s=0.5",
            "teacher.timeout_s=1.0",
            "teacher.max_retries=8",
        ],
    )


@pytest.fixture
def replay(cfg: PipelineConfig, tmp_path: Path) -> Path:
    path = tmp_path / "replay.jsonl"
    seed_bfcl(make_s3_client(cfg.storage), cfg.storage.bucket, cfg.seed, path, TARGET.pii)
    return path


@pytest.fixture
def teacher(request: pytest.FixtureRequest, replay: Path, tmp_path: Path) -> Iterator[str]:
    faults = getattr(request, "param", [])
    with services.running(services.start_teacher(replay, tmp_path, faults=faults)) as service:
        yield service.url


def stats(url: str, settle_s: float = 10.0) -> dict[str, int]:
    """The server's books once every request it received is decided: a request the client
    gave up on is still hanging there, and only counts as abandoned when it wakes up."""
    deadline = time.monotonic() + settle_s
    while True:
        with urllib.request.urlopen(url.removesuffix("/v1") + "/stats") as response:
            books = json.loads(response.read())
        if not books.get("in_flight") or time.monotonic() > deadline:
            return books
        time.sleep(0.1)


def reconciles(result, sampled: int) -> bool:
    return len(result.labelled) + len(result.quarantined) + len(result.skipped) == sampled


@pytest.mark.parametrize("teacher", [MIXED_FAULTS], indirect=True)
def test_mixed_faults_lose_nothing_and_pay_nothing_twice(cfg: PipelineConfig, teacher) -> None:
    s3 = make_s3_client(cfg.storage)
    manifest = sample_documents(s3, cfg.storage.bucket, cfg.sampling, TARGET)
    cfg.teacher.base_url = teacher
    result = label_manifest(s3, manifest, TARGET, cfg.teacher)
    counts, server = result.counts(), stats(teacher)
    assert reconciles(result, len(manifest.items)) and not result.skipped
    # Every fault kind happened, and the client absorbed it.
    for kind in ("rate_limited", "server_error", "abandoned", "malformed", "schema_invalid"):
        assert server.get(kind, 0) > 0, kind
    assert set(counts["retries_by_error"]) == {
        "RateLimitError",
        "InternalServerError",
        "APITimeoutError",
    }
    assert result.repaired > 0
    # Quarantined is only what is really wrong (BFCL answers that break their own schema) or
    # an answer still invalid after its one repair; every transient fault was retried away.
    reasons = [q["reason"] for q in result.quarantined]
    assert all(r.startswith("schema_invalid") or r.endswith("(after repair)") for r in reasons)
    assert len(result.labelled) >= len(manifest.items) - 4
    # The provider's books and ours agree to the token; nothing was delivered twice.
    assert server.get("repeats", 0) == 0
    assert server["delivered"] == result.teacher_calls
    assert server["billed_prompt_tokens"] == result.prompt_tokens
    assert server["billed_completion_tokens"] == result.completion_tokens
    assert counts["cost_usd"] == pytest.approx(
        (result.prompt_tokens * 2.5 + result.completion_tokens * 10.0) / 1e6, abs=1e-6
    )

    again = label_manifest(s3, manifest, TARGET, cfg.teacher)
    assert again.teacher_calls == 0 and stats(teacher)["delivered"] == server["delivered"]
    assert [r["output"] for r in again.labelled] == [r["output"] for r in result.labelled]
    assert again.counts()["cost_usd"] == 0 and again.counts()["saved_by_cache_usd"] > 0


@pytest.mark.parametrize("teacher", [["p_5xx=1.0"]], indirect=True)
def test_failure_budget_stops_the_run_and_counts_the_rest(cfg: PipelineConfig, teacher) -> None:
    s3 = make_s3_client(cfg.storage)
    manifest = sample_documents(s3, cfg.storage.bucket, cfg.sampling, TARGET)
    cfg.teacher.base_url = teacher
    cfg.teacher.max_retries = 1
    cfg.teacher.failure_budget = 3
    cfg.teacher.concurrency = 2
    result = label_manifest(s3, manifest, TARGET, cfg.teacher)
    assert result.stopped == "failure_budget_exhausted"
    assert reconciles(result, len(manifest.items))
    assert 3 <= len(result.quarantined) <= 3 + cfg.teacher.concurrency
    assert len(result.skipped) >= len(manifest.items) - 5
    assert {s["reason"] for s in result.skipped} == {"failure_budget_exhausted"}
    # Each failed document cost 2 attempts; the skipped ones cost nothing.
    assert stats(teacher)["requests"] == 2 * len(result.quarantined)
    with pytest.raises(LabellingStopped, match="rerun resumes"):
        raise_if_stopped(result)


@pytest.mark.parametrize("teacher", [["rate_limit_rps=15"]], indirect=True)
def test_client_rate_limit_keeps_the_provider_from_throttling(cfg: PipelineConfig, teacher) -> None:
    s3 = make_s3_client(cfg.storage)
    manifest = sample_documents(s3, cfg.storage.bucket, cfg.sampling, TARGET)
    cfg.teacher.base_url = teacher
    cfg.teacher.concurrency = 16
    cfg.teacher.requests_per_minute = 600  # 10/s against a server that takes 15/s
    started = time.perf_counter()
    result = label_manifest(s3, manifest, TARGET, cfg.teacher)
    elapsed = time.perf_counter() - started
    assert stats(teacher).get("rate_limited", 0) == 0 and not result.retries
    requests = stats(teacher)["requests"]
    # Evenly spaced at 10/s: never faster than the limit allows.
    assert elapsed >= (requests - 1) / 10


@pytest.mark.parametrize("teacher", [["rate_limit_rps=10"]], indirect=True)
def test_without_a_client_limit_429s_are_retried_until_done(cfg: PipelineConfig, teacher):
    s3 = make_s3_client(cfg.storage)
    manifest = sample_documents(s3, cfg.storage.bucket, cfg.sampling, TARGET)
    cfg.teacher.base_url = teacher
    cfg.teacher.concurrency = 16
    # A herd of 16 against 10/s: growing jittered backoff is what spreads it out.
    cfg.teacher.backoff_s, cfg.teacher.backoff_max_s = 0.2, 5.0
    result = label_manifest(s3, manifest, TARGET, cfg.teacher)
    assert stats(teacher)["rate_limited"] > 0 and result.retries["RateLimitError"] > 0
    assert not any(q["reason"].startswith("teacher_error") for q in result.quarantined), [
        q["reason"] for q in result.quarantined
    ]


# ---------------------------------------------------------------- kill and resume


def label_command(cfg: PipelineConfig, teacher: str, run_id: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "stillroom.cli",
        "label",
        "--profile",
        "smoke",
        "--run-id",
        run_id,
        f"storage.endpoint_url={cfg.storage.endpoint_url}",
        f"storage.bucket={cfg.storage.bucket}",
        f"teacher.base_url={teacher}",
        "teacher.concurrency=4",
        "teacher.progress_every_s=0.5",
    ]


def kill_midway(command: list[str], teacher: str, signum: int, after: int) -> int:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while stats(teacher, settle_s=0).get("delivered", 0) < after:
        assert process.poll() is None, process.stdout.read().decode()
        assert time.monotonic() < deadline, "labelling never got going"
        time.sleep(0.05)
    process.send_signal(signum)
    return process.wait(timeout=60)


@pytest.mark.parametrize("teacher", [["latency_ms=250"]], indirect=True)
def test_sigterm_midway_then_rerun_resumes_with_no_repeated_calls(
    cfg: PipelineConfig, teacher
) -> None:
    command = label_command(cfg, teacher, "killed-gently")
    assert kill_midway(command, teacher, signal.SIGTERM, after=8) == 3
    s3, bucket = make_s3_client(cfg.storage), cfg.storage.bucket
    first = get_json(s3, bucket, "runs/killed-gently/labels/label-counts.json")
    assert first["stopped"] == "interrupted" and first["skipped"] > 0
    delivered_before = stats(teacher)["delivered"]
    # In-flight answers were waited for and cached: the server delivered what we recorded.
    assert delivered_before == first["teacher_calls"]

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    second = json.loads(rerun.stdout)["labelling"]
    server = stats(teacher)
    assert server.get("repeats", 0) == 0
    assert second["cache_hits"] == first["teacher_calls"]
    assert server["delivered"] == first["teacher_calls"] + second["teacher_calls"]
    sampled = json.loads(rerun.stdout)["sampling"]["sampled"]
    assert second["labelled"] + second["quarantined"] == sampled and second["skipped"] == 0


@pytest.mark.parametrize("teacher", [["latency_ms=250"]], indirect=True)
def test_sigkill_midway_loses_only_answers_in_flight(cfg: PipelineConfig, teacher) -> None:
    command = label_command(cfg, teacher, "killed-hard")
    assert kill_midway(command, teacher, signal.SIGKILL, after=8) == -signal.SIGKILL
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    result = json.loads(rerun.stdout)
    labelling, sampled = result["labelling"], result["sampling"]["sampled"]
    assert labelling["labelled"] + labelling["quarantined"] == sampled
    # A kill -9 cannot wait for anything: answers in flight (at most the concurrency, 4)
    # may have been delivered but not yet cached, and those are asked for again.
    assert labelling["cache_hits"] >= 8 - 4
    server = stats(teacher)
    assert server.get("repeats", 0) <= 4
    assert (
        server["delivered"] - server.get("repeats", 0)
        == labelling["cache_hits"] + labelling["teacher_calls"]
    )
