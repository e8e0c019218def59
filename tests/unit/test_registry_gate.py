"""Promotion gates, champion comparison, rollback replay and the model card, on plain data."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from stillroom import registry
from stillroom.config import RegistryConfig, TrainingConfig
from stillroom.registry import (
    Candidate,
    ChampionScore,
    Lineage,
    champion_score,
    code_version,
    config_hash,
    decide_promotion,
    failed_gates,
    model_card,
    rollback_target,
    version_tags,
)

LINEAGE = Lineage(
    target="bfcl_tool_call",
    prompt_version="v1",
    dataset_hash="d" * 64,
    teacher_model="replay-teacher",
    base_model="tiny",
    training_config_hash="0123456789abcdef",
    code_version="abc123",
    pipeline_run="run-1",
)


def gates(**fields: Any) -> RegistryConfig:
    return RegistryConfig(**({"min_accuracy": 0.5} | fields))


def champion(version: str = "3", value: float | None = 0.7) -> ChampionScore:
    return ChampionScore(version, value, "re-scored on this test set")


def candidate(**fields: Any) -> Candidate:
    defaults: dict[str, Any] = {
        "model_uri": "models:/m-1",
        "primary": "accuracy",
        "metrics": {"accuracy": 0.6},
        "lineage": LINEAGE,
    }
    return Candidate(**(defaults | fields))


def registered(version: str, **tags: str) -> Any:
    """What `champion_score` reads of an MLflow ModelVersion."""
    return SimpleNamespace(version=version, tags=tags)


# --- decide_promotion -----------------------------------------------------------------------


def test_first_candidate_over_the_floor_is_promoted() -> None:
    decision = decide_promotion(gates(), "accuracy", {"accuracy": 0.6}, None)
    assert decision.promote and decision.reasons == []
    assert decision.checks == {
        "min_accuracy": "pass: 0.600 >= 0.500",
        "min_margin": "pass: no champion yet",
        "max_latency_ms": "off: no latency limit set",
    }
    assert decision.summary().startswith("promoted")


def test_below_the_floor_stays_challenger_with_the_reason() -> None:
    decision = decide_promotion(gates(), "accuracy", {"accuracy": 0.07}, None)
    assert not decision.promote
    assert decision.checks["min_accuracy"] == "fail: 0.070 < 0.500"
    assert decision.reasons == ["min_accuracy fail: 0.070 < 0.500"]
    assert decision.summary() == "kept as challenger: min_accuracy fail: 0.070 < 0.500"


def test_floor_met_exactly_passes() -> None:
    assert decide_promotion(gates(), "accuracy", {"accuracy": 0.5}, None).promote


def test_champion_better_blocks_promotion() -> None:
    decision = decide_promotion(gates(), "accuracy", {"accuracy": 0.6}, champion("3", 0.7))
    assert not decision.promote
    assert decision.checks["min_margin"] == "fail: 0.600 vs v3 0.700 = -0.100 < margin +0.000"


def test_tie_with_champion_passes_at_zero_margin() -> None:
    # The smoke flow's second run may tie the first (both 0.0): the newer model wins.
    assert decide_promotion(gates(), "accuracy", {"accuracy": 0.7}, champion("3", 0.7)).promote
    assert decide_promotion(
        gates(min_accuracy=0.0), "accuracy", {"accuracy": 0.0}, champion("1", 0.0)
    ).promote


def test_margin_met_exactly_passes_despite_float_rounding() -> None:
    # 0.7 - 0.6 == 0.09999999999999998 in floating point.
    decision = decide_promotion(
        gates(min_margin=0.1), "accuracy", {"accuracy": 0.7}, champion("3", 0.6)
    )
    assert decision.promote, decision.checks
    assert decision.checks["min_margin"].startswith("pass: 0.700 vs v3 0.600 = +0.100")


def test_gain_short_of_the_margin_fails() -> None:
    decision = decide_promotion(
        gates(min_margin=0.1), "accuracy", {"accuracy": 0.75}, champion("3", 0.7)
    )
    assert not decision.promote
    assert decision.reasons == ["min_margin fail: 0.750 vs v3 0.700 = +0.050 < margin +0.100"]


def test_champion_not_scored_on_this_test_set_blocks_the_margin_gate() -> None:
    unscored = ChampionScore("3", None, "registered on dataset eeee, not re-scored here")
    decision = decide_promotion(gates(), "accuracy", {"accuracy": 0.9}, unscored)
    assert not decision.promote
    assert "v3 has no accuracy on this test set" in decision.checks["min_margin"]


def test_latency_over_the_limit_fails() -> None:
    metrics = {"accuracy": 0.9, "latency_p95_ms": 250.0}
    decision = decide_promotion(gates(max_latency_ms=200), "accuracy", metrics, None)
    assert not decision.promote
    assert decision.checks["max_latency_ms"] == "fail: p95 250.0 ms > 200.0 ms"


def test_latency_within_the_limit_passes() -> None:
    metrics = {"accuracy": 0.9, "latency_p95_ms": 200.0}
    assert decide_promotion(gates(max_latency_ms=200), "accuracy", metrics, None).promote


def test_missing_latency_fails_when_the_gate_is_set() -> None:
    decision = decide_promotion(gates(max_latency_ms=200), "accuracy", {"accuracy": 0.9}, None)
    assert not decision.promote
    assert decision.reasons == [
        "max_latency_ms fail: latency_p95_ms missing from the candidate's metrics (limit 200.0 ms)"
    ]


def test_missing_or_nan_primary_fails_every_comparison() -> None:
    for metrics in ({}, {"accuracy": float("nan")}):
        decision = decide_promotion(gates(), "accuracy", metrics, champion())
        assert not decision.promote
        assert [r.split(" ")[0] for r in decision.reasons] == ["min_accuracy", "min_margin"]


def test_every_failed_gate_is_a_reason() -> None:
    metrics = {"accuracy": 0.1, "latency_p95_ms": 900.0}
    decision = decide_promotion(gates(max_latency_ms=100), "accuracy", metrics, champion())
    assert [r.split(" ")[0] for r in decision.reasons] == [
        "min_accuracy",
        "min_margin",
        "max_latency_ms",
    ]


def test_the_primary_metric_is_the_targets_not_always_accuracy() -> None:
    decision = decide_promotion(gates(), "f1", {"f1": 0.8, "accuracy": 0.1}, None)
    assert decision.promote


# --- champion_score -------------------------------------------------------------------------


def test_no_champion_means_no_comparison() -> None:
    assert champion_score(None, candidate()) is None


def test_rescored_champion_is_used() -> None:
    mine = candidate(champion_metrics={"accuracy": 0.55})
    assert champion_score(registered("4"), mine) == ChampionScore(
        "4", 0.55, "re-scored on this test set"
    )


def test_rescore_of_another_version_is_not_trusted() -> None:
    # The champion moved between scoring (v4) and registration (now v5).
    mine = candidate(champion_metrics={"accuracy": 0.55}, champion_version="4")
    score = champion_score(registered("5"), mine)
    assert score is not None and score.version == "5" and score.value is None


def test_registered_score_counts_only_on_the_same_dataset() -> None:
    same = registered("2", **{"dataset_hash": LINEAGE.dataset_hash, "metric.accuracy": "0.4"})
    assert champion_score(same, candidate()) == ChampionScore(
        "2", 0.4, "its registered score, same dataset"
    )
    other = registered("2", **{"dataset_hash": "e" * 64, "metric.accuracy": "0.4"})
    score = champion_score(other, candidate())
    assert score is not None and score.value is None and "eeeeeeeeeeee" in score.basis


# --- rollback_target ------------------------------------------------------------------------


def move(action: str, version: str, previous: str | None) -> dict[str, Any]:
    return {"action": action, "version": version, "previous": previous}


def test_rollback_goes_to_the_previous_champion() -> None:
    history = [move("auto", "1", None), move("auto", "3", "1")]
    assert rollback_target(history, "3") == "1"


def test_second_rollback_goes_back_further() -> None:
    history = [move("auto", "1", None), move("promote", "2", "1"), move("auto", "4", "2")]
    history.append(move("rollback", "2", "4"))
    assert rollback_target(history, "2") == "1"
    history.append(move("rollback", "1", "2"))
    assert rollback_target(history, "1") is None


def test_first_champion_has_nothing_to_roll_back_to() -> None:
    assert rollback_target([move("auto", "1", None)], "1") is None
    assert rollback_target([], "1") is None


def test_alias_moved_in_the_ui_rolls_back_to_the_last_recorded_champion() -> None:
    history = [move("auto", "1", None), move("auto", "3", "1")]
    assert rollback_target(history, "5") == "3"


# --- tags, card, lineage --------------------------------------------------------------------


def test_version_tags_make_a_version_reviewable_on_its_own() -> None:
    mine = candidate(
        metrics={"accuracy": 0.07, "latency_p95_ms": 41.5},
        base_metrics={"accuracy": 0.0},
        dataset_sizes={"train": 30, "validation": 4, "test": 8},
    )
    score = champion("3", 0.2)
    decision = decide_promotion(gates(), "accuracy", mine.metrics, score)
    tags = version_tags(mine, score, decision, "auto")
    assert {k: tags[k] for k in ("dataset_hash", "teacher_model", "prompt_version")} == {
        "dataset_hash": LINEAGE.dataset_hash,
        "teacher_model": "replay-teacher",
        "prompt_version": "v1",
    }
    assert tags["base_model"] == "tiny" and tags["code_version"] == "abc123"
    assert tags["training_config_hash"] == "0123456789abcdef"
    assert tags["primary_metric"] == "accuracy" and tags["metric.accuracy"] == "0.07"
    assert tags["metric.latency_p95_ms"] == "41.5" and tags["base.accuracy"] == "0.0"
    assert tags["vs_champion.version"] == "3" and tags["vs_champion.accuracy"] == "0.2"
    assert tags["gate.min_accuracy"] == "fail: 0.070 < 0.500"
    assert tags["promotion"].startswith("kept as challenger")
    assert json.loads(tags["dataset_sizes"]) == {"train": 30, "validation": 4, "test": 8}


def test_version_tags_without_champion_say_none() -> None:
    decision = decide_promotion(gates(), "accuracy", {"accuracy": 0.6}, None)
    tags = version_tags(candidate(), None, decision, "pending")
    assert tags["vs_champion.version"] == "none" and "vs_champion.accuracy" not in tags
    assert tags["promotion"] == "awaiting review: every gate passes"
    assert tags["review.status"] == "pending"


def test_model_card_says_what_it_learned_from_and_how_it_scored() -> None:
    mine = candidate(
        base_metrics={"accuracy": 0.1}, dataset_sizes={"train": 30, "validation": 4, "test": 8}
    )
    score = champion("3", 0.5)
    decision = decide_promotion(gates(), "accuracy", mine.metrics, score)
    card = model_card("student", mine, score, decision, decision.summary())
    assert "dataset `dddddddddddd` (train 30 / validation 4 / test 8)" in card
    assert "teacher `replay-teacher`" in card and "base model `tiny`" in card
    assert "| candidate | 0.600 | n/a |" in card
    assert "| champion v3 (re-scored on this test set) | 0.500 |" in card
    assert "| base model, untrained | 0.100 |" in card
    assert "| min_margin | pass: 0.600 vs v3 0.500 = +0.100 >= margin +0.000 |" in card
    assert card.endswith("**Outcome**: promoted to champion: every gate passes")


def test_failed_gates_are_read_back_from_the_version_tags() -> None:
    tags = {"gate.min_accuracy": "fail: 0.070 < 0.500", "gate.min_margin": "pass: no champion yet"}
    assert failed_gates(registered("2", **tags)) == ["min_accuracy fail: 0.070 < 0.500"]
    assert failed_gates(registered("2")) == ["no gate results recorded on this version"]


def test_config_hash_follows_the_values() -> None:
    assert config_hash(TrainingConfig()) == config_hash(TrainingConfig())
    assert config_hash(TrainingConfig()) != config_hash(TrainingConfig(max_steps=4))
    assert len(config_hash(TrainingConfig())) == 16


def test_code_version_is_the_commit_in_a_checkout() -> None:
    root = Path(registry.__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    assert code_version(root).startswith(head.stdout.strip())


def test_code_version_without_git_falls_back_to_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".git").mkdir()

    def no_git(*_: object, **__: object) -> None:
        raise FileNotFoundError("git")

    monkeypatch.setattr(registry.subprocess, "run", no_git)
    assert code_version(tmp_path).startswith("stillroom==")
    assert code_version(tmp_path / "not-a-checkout").startswith("stillroom==")
