"""Stages are not paid for twice: a retried run reuses its sample and labels, and every
run's teacher calls share one global concurrency limit. Real local services throughout."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.testing.utilities import prefect_test_harness

from stillroom import services
from stillroom.config import load_config
from stillroom.params import DistillParams
from stillroom.sampling import Manifest, sample_documents
from stillroom.seeding import seed_bfcl
from stillroom.storage import make_s3_client
from stillroom.targets import load_target
from tasks.data import label_task


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("reuse-home")
    mp.setenv("STILLROOM_HOME", str(path))
    services.ensure_local_aws_credentials()
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def stack(home: Path) -> Iterator[dict[str, str]]:
    """Prefect's test server, moto S3 seeded with the smoke documents, the replay teacher."""
    with (
        prefect_test_harness(server_startup_timeout=120),
        services.running(services.start_moto(home / "logs")) as s3_server,
    ):
        cfg = load_config("smoke", [f"storage.endpoint_url={s3_server.url}"])
        replay = home / "replay.jsonl"
        pii = load_target(cfg.target).pii
        seed_bfcl(make_s3_client(cfg.storage), cfg.storage.bucket, cfg.seed, replay, pii)
        with services.running(services.start_teacher(replay, home / "logs")) as teacher:
            yield {"s3": s3_server.url, "teacher": teacher.url}


def teacher_stats(stack: dict[str, str]) -> dict[str, float]:
    url = stack["teacher"].removesuffix("/v1") + "/stats"
    with urllib.request.urlopen(url) as response:
        return json.loads(response.read())


def teacher_admin(stack: dict[str, str], path: str, body: dict | None = None) -> None:
    url = stack["teacher"].removesuffix("/v1") + path
    data = json.dumps(body).encode() if body is not None else b""
    method = "PUT" if body is not None else "POST"
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    urllib.request.urlopen(request).close()


def trainer_pids(home: Path) -> list[int]:
    """The trainer processes (launcher and worker) working under this test's home."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"stillroom.training" in argv and any(str(home).encode() in a for a in argv):
            pids.append(int(proc.name))
    return pids


class CrashTrainerOnce(threading.Thread):
    """SIGKILL the trainer once it has saved checkpoint-5: a worker node lost mid-training.

    Records the teacher's books at that moment, after labelling and before any retry.
    """

    def __init__(self, home: Path, stack: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.home, self.stack = home, stack
        self.stats_at_crash: dict[str, float] | None = None
        self.done = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not self.done.is_set():
            if list(self.home.glob("work/*/training/checkpoints/checkpoint-5/trainer_state.json")):
                self.stats_at_crash = teacher_stats(self.stack)
                for pid in trainer_pids(self.home):
                    os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.02)


def task_run_states(flow_run_id: object, name: str) -> list[str]:
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterName,
    )
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=name)),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
        )
    return [r.state.name for r in runs if r.name.split("-")[0] == name]


def test_retried_run_after_a_training_crash_does_not_resample_or_relabel(
    home: Path, stack: dict[str, str]
) -> None:
    from flows.distill import distill

    crash = CrashTrainerOnce(home, stack)
    crash.start()
    overrides = [
        f"storage.endpoint_url={stack['s3']}",
        f"teacher.base_url={stack['teacher']}",
        # Long enough to be killed mid-run; no in-task relaunch, so the flow run fails.
        "training.max_steps=40",
        "training.eval_steps=5",
        "training.retries=0",
        "evaluation.evaluate_champion=false",
    ]
    params = DistillParams(profile="smoke", overrides=overrides)
    state = distill.with_options(retries=1, retry_delay_seconds=0)(params, return_state=True)
    crash.done.set()
    assert crash.stats_at_crash is not None, "the trainer was never caught mid-run"
    assert state.is_completed(), state.message
    summary = state.result()
    # The retry trained on from the crashed attempt's checkpoint, to the planned end.
    assert summary["training"]["resumed_from"] is not None
    assert summary["training"]["steps"] == 40
    # Not one more teacher call: the retry took its labels from the first attempt.
    after = teacher_stats(stack)
    assert after["delivered"] == crash.stats_at_crash["delivered"] > 0
    assert after["requests"] == crash.stats_at_crash["requests"]
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
    assert flow_run.run_count == 2
    for stage in ("sample", "label", "build"):
        assert task_run_states(flow_run.id, stage) == ["Completed", "Cached"], stage


@flow
def label_two_runs_at_once(overrides: list[str], manifests: list[Manifest]) -> list[int]:
    cfg = load_config("smoke", overrides)
    futures = [label_task.submit(cfg, f"limit-{i}", m) for i, m in enumerate(manifests)]
    return [f.result().counts()["labelled"] for f in futures]


def quarter(manifest: Manifest, i: int) -> Manifest:
    n = len(manifest.items) // 4
    return dataclasses.replace(manifest, items=manifest.items[i * n : (i + 1) * n])


def test_teacher_calls_of_concurrent_runs_share_the_global_limit(
    home: Path, stack: dict[str, str]
) -> None:
    base = [
        f"storage.endpoint_url={stack['s3']}",
        f"teacher.base_url={stack['teacher']}",
        "teacher.concurrency=8",
        # A model name of its own: answers cached by the other test must not stand in for calls.
        "teacher.model=limit-test",
    ]
    cfg = load_config("smoke", base)
    s3 = make_s3_client(cfg.storage)
    manifest = sample_documents(s3, cfg.storage.bucket, cfg.sampling, load_target(cfg.target))
    # Slow answers, so each run keeps all 8 of its requests open when nothing holds it back.
    teacher_admin(stack, "/admin/faults", {"latency_ms": 300})
    try:
        teacher_admin(stack, "/admin/reset")
        unlimited = [*base, "teacher.global_limit=null"]
        label_two_runs_at_once(unlimited, [quarter(manifest, 0), quarter(manifest, 1)])
        assert teacher_stats(stack)["max_in_flight"] > 3  # the check below can fail

        teacher_admin(stack, "/admin/reset")
        limited = [*base, "teacher.global_limit=teacher-test", "teacher.global_limit_slots=3"]
        labelled = label_two_runs_at_once(limited, [quarter(manifest, 2), quarter(manifest, 3)])
        assert labelled == [len(quarter(manifest, 2).items)] * 2
        assert teacher_stats(stack)["max_in_flight"] <= 3
    finally:
        teacher_admin(stack, "/admin/faults", {})
