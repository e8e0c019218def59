"""The drift watch's own parts: the recent window, the new-document count, the decision."""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime, timedelta

import pytest

from stillroom.config import SamplingConfig, WatchConfig
from stillroom.drift import (
    Observation,
    RecentRun,
    count_new_documents,
    decide_trigger,
    decision_markdown,
    distill_parameters,
    documents_in_window,
    hold_for,
    score_rows,
    watch_sampling,
    window_dates,
)
from stillroom.sampling import sample_documents
from stillroom.targets import load_target

TARGET = load_target("configs/targets/bfcl_tool_call.yaml")
TODAY = date(2026, 12, 4)
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
CFG = WatchConfig()  # min_agreement 0.5, min_scored 10, new_documents_trigger 1000


class FakeS3:
    """Just the calls the sampler and the counter make: a listing and object reads."""

    def __init__(self, objects: dict[str, tuple[bytes, datetime]]) -> None:
        self.objects = objects
        self.reads: list[str] = []

    def get_paginator(self, name: str) -> FakeS3:
        return self

    def paginate(self, Bucket: str, Prefix: str):  # noqa: N803 (boto3's argument names)
        keys = sorted(k for k in self.objects if k.startswith(Prefix))
        yield {"Contents": [{"Key": k, "LastModified": self.objects[k][1]} for k in keys]}

    def get_object(self, Bucket: str, Key: str) -> dict:  # noqa: N803
        self.reads.append(Key)
        return {"Body": io.BytesIO(self.objects[Key][0])}


def document(i: int) -> bytes:
    return json.dumps(
        {
            "id": f"doc-{i}",
            "messages": [{"role": "user", "content": f"look up order number {i} for me"}],
            "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
        }
    ).encode()


def logs(days_ago: dict[int, int], modified: datetime = NOW) -> dict[str, tuple[bytes, datetime]]:
    """{days ago: documents} as requests/<date>/doc-<i>.json, ids unique across days."""
    objects, i = {}, 0
    for ago, n in days_ago.items():
        day = (TODAY - timedelta(days=ago)).isoformat()
        for _ in range(n):
            objects[f"requests/{day}/doc-{i}.json"] = (document(i), modified)
            i += 1
    return objects


def observed(**changes) -> Observation:
    values = dict(
        champion_version="3", primary="accuracy", agreement=0.9, scored=40, new_documents=5
    )
    return Observation(**(values | changes))


# ---------------------------------------------------------------- the window


def test_window_ends_today_and_includes_it() -> None:
    assert window_dates(TODAY, 3) == ["2026-12-04", "2026-12-03", "2026-12-02"]


def test_watch_reads_only_recent_partitions_and_keeps_the_whole_count() -> None:
    objects = logs({0: 6, 3: 6, 30: 20})
    objects["requests/undated/doc-x.json"] = (document(999), NOW)
    s3 = FakeS3(objects)
    cfg = WatchConfig(size=10, since_days=7)
    sampling = watch_sampling(SamplingConfig(read_workers=2), cfg, TODAY)
    manifest = sample_documents(s3, "b", sampling, TARGET)
    recent = ("requests/2026-12-04/", "requests/2026-12-01/")
    assert len(manifest.items) == 10 and all(c.key.startswith(recent) for c in manifest.items)
    assert s3.reads and all(k.startswith(recent) for k in s3.reads)  # old ones never read
    assert manifest.listed == 33
    assert documents_in_window(manifest.listed, manifest.listed_by_stratum, cfg, TODAY) == 12


def test_without_a_window_the_whole_prefix_is_drawn_from() -> None:
    cfg = WatchConfig(size=10, since_days=None)
    sampling = watch_sampling(SamplingConfig(read_workers=2, stratify=None), cfg, TODAY)
    assert sampling.stratify is None and sampling.size == 10
    manifest = sample_documents(FakeS3(logs({0: 2, 30: 20})), "b", sampling, TARGET)
    assert len(manifest.items) == 10
    assert documents_in_window(manifest.listed, manifest.listed_by_stratum, cfg, TODAY) == 22


def test_new_documents_are_counted_by_when_they_were_written() -> None:
    champion_registered = NOW - timedelta(hours=1)
    objects = logs({0: 4}, modified=NOW - timedelta(hours=2))
    objects |= {f"requests/x/{i}.json": (b"", NOW) for i in range(3)}  # malformed count too
    objects["runs/r/manifest.json"] = (b"{}", NOW)  # outside the prefix
    assert count_new_documents(FakeS3(objects), "b", "requests/", champion_registered) == 3


def test_fresh_labels_become_evaluation_rows() -> None:
    labelled = [
        {
            "id": i,
            "sha256": "h",
            "messages": [{"role": "user", "content": "x"}],
            "tools": [],
            "output": {"tool_calls": [{"name": "f", "arguments": {"a": 1}}]},
        }
        for i in ("b", "a")
    ]
    rows = score_rows(labelled)
    assert [r["id"] for r in rows] == ["a", "b"]
    assert json.loads(rows[0]["answer"]) == [{"name": "f", "arguments": {"a": 1}}]  # as split


# ---------------------------------------------------------------- the decision


def test_low_agreement_triggers_with_its_reason() -> None:
    decision = decide_trigger(observed(agreement=0.05), CFG)
    assert decision.trigger
    (reason,) = decision.reasons
    assert reason == "agreement low: accuracy 0.050 on 40 fresh labels < 0.5"
    assert decision.summary() == f"distill triggered: {reason}"


def test_agreement_exactly_at_the_threshold_does_not_trigger() -> None:
    decision = decide_trigger(observed(agreement=20 / 40), CFG)
    assert not decision.trigger and decision.checks["agreement"].startswith("ok:")
    assert decision.summary().startswith("no trigger: champion v3; agreement ok")


def test_too_few_fresh_labels_are_logged_but_not_judged() -> None:
    decision = decide_trigger(observed(agreement=0.0, scored=3), CFG)
    assert not decision.trigger
    assert decision.checks["agreement"] == "not judged: 3 fresh labels, fewer than 10"


def test_enough_new_documents_trigger_and_every_reason_is_kept() -> None:
    cfg = WatchConfig(new_documents_trigger=100)
    assert decide_trigger(observed(new_documents=100), cfg).reasons == [
        "new_documents enough: 100 since champion v3 >= 100"
    ]
    both = decide_trigger(observed(new_documents=500, agreement=0.1), cfg)
    assert [r.split()[0] for r in both.reasons] == ["agreement", "new_documents"]
    off = decide_trigger(observed(new_documents=10**6), WatchConfig(new_documents_trigger=None))
    assert not off.trigger and off.checks["new_documents"] == "off"


@pytest.mark.parametrize("enabled", [False, True])
def test_no_champion_triggers_only_when_asked_to(enabled: bool) -> None:
    obs = observed(champion_version=None, agreement=None, scored=0, new_documents=None)
    decision = decide_trigger(obs, WatchConfig(trigger_without_champion=enabled))
    assert decision.trigger is enabled
    assert decision.reasons == (["no champion yet"] if enabled else [])
    assert decision.checks == {
        "champion": "none",
        "agreement": "not measured: no champion",
        "new_documents": "not counted: no champion",
    }


def run(created: datetime, final: bool, state: str = "Completed") -> RecentRun:
    return RecentRun(id="1", name="brave-otter", state=state, created=created, final=final)


def test_a_wanted_trigger_waits_for_an_unfinished_run_however_old() -> None:
    wanted = decide_trigger(observed(agreement=0.0), CFG)
    stale = run(NOW - timedelta(days=30), final=False, state="Scheduled")
    held = hold_for(wanted, [stale], NOW, cooldown_hours=12)
    assert not held.trigger and held.reasons == wanted.reasons
    assert held.held == "run brave-otter (Scheduled, created 2026-11-04 12:00Z) is unfinished"
    assert held.summary().startswith("held (run brave-otter")


def test_a_finished_run_holds_only_within_the_cooldown() -> None:
    wanted = decide_trigger(observed(agreement=0.0), CFG)
    recent = hold_for(wanted, [run(NOW - timedelta(hours=2), final=True)], NOW, 12)
    assert not recent.trigger and "created within 12 h" in (recent.held or "")
    old = hold_for(wanted, [run(NOW - timedelta(hours=13), final=True)], NOW, 12)
    assert old.trigger and old.checks["cooldown"] == "clear"
    assert hold_for(wanted, [], NOW, 0).trigger


def test_nothing_wanted_is_left_alone() -> None:
    quiet = decide_trigger(observed(), CFG)
    assert hold_for(quiet, [run(NOW, final=False)], NOW, 12) == quiet


def test_the_watch_changes_only_what_it_sets_in_the_deployments_form() -> None:
    deployed = {"params": {"profile": "demo", "overrides": ["x=1"], "gate": {"min_margin": 0.1}}}
    assert distill_parameters(WatchConfig(), deployed) == {}
    cfg = WatchConfig(distill_profile="gpu", distill_overrides=["a.b=1"])
    # Prefect replaces `params` whole, so the deployment's other fields are carried over.
    assert distill_parameters(cfg, deployed) == {
        "params": {"profile": "gpu", "overrides": ["a.b=1"], "gate": {"min_margin": 0.1}}
    }
    assert distill_parameters(WatchConfig(distill_profile="gpu"), deployed)["params"][
        "overrides"
    ] == ["x=1"]
    assert distill_parameters(cfg, {}) == {"params": {"profile": "gpu", "overrides": ["a.b=1"]}}


def test_the_artifact_leads_with_the_decision_and_names_the_run_started() -> None:
    decision = decide_trigger(observed(agreement=0.0), CFG)
    markdown = decision_markdown(
        {
            "run_id": "watch-1",
            "decision": {"summary": decision.summary(), "checks": decision.checks},
            "counts": {
                "listed": 52,
                "in_window": 52,
                "sampled": 40,
                "labelled": 40,
                "new_since_champion": 5,
            },
            "triggered": {"deployment": "distill/on-demand", "name": "brave-otter", "id": "u1"},
            "mlflow_run_id": "m1",
        }
    )
    lines = markdown.splitlines()
    assert lines[0] == "### Drift watch watch-1"
    assert lines[4] == f"| decision | {decision.summary()} |"
    assert "| triggered run | distill/on-demand: brave-otter (u1) |" in lines
