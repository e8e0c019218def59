"""The flows' parameter models: what a form sets reaches the config, and nothing else."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stillroom.params import DistillParams, EvaluateParams, GateParams, WatchParams


def test_an_empty_form_is_the_profile_as_it_is() -> None:
    params = DistillParams(profile="smoke")
    assert params.config_overrides() == []
    assert params.load() == DistillParams(profile="smoke").load()


def test_each_form_field_reaches_its_config_key() -> None:
    params = DistillParams(
        profile="smoke",
        sample_size=40,
        teacher_model="gpt-4.1-mini",
        teacher_base_url="https://llm.internal:8443/v1#primary",
        base_model="qwen2.5-coder-0.5b",
        gate=GateParams(min_accuracy=0.0, min_margin=-0.02, max_latency_ms=900, review="manual"),
    )
    cfg = params.load()
    assert cfg.sampling.size == 40
    assert cfg.teacher.model == "gpt-4.1-mini"
    # Quoted on the way: YAML would read the `#...` tail as a comment.
    assert cfg.teacher.base_url == "https://llm.internal:8443/v1#primary"
    assert cfg.student.base_model == "qwen2.5-coder-0.5b"
    assert (cfg.registry.min_accuracy, cfg.registry.min_margin) == (0.0, -0.02)
    assert (cfg.registry.max_latency_ms, cfg.registry.review) == (900, "manual")
    # What the form left empty is the profile's.
    assert cfg.training == DistillParams(profile="smoke").load().training


def test_a_free_form_override_has_the_last_word() -> None:
    params = DistillParams(profile="smoke", sample_size=40, overrides=["sampling.size=25"])
    assert params.config_overrides() == ["sampling.size=40", "sampling.size=25"]
    assert params.load().sampling.size == 25


@pytest.mark.parametrize(
    "fields",
    [
        {"sample_sise": 10},  # misspelt
        {"sample_size": 0},
        {"gate": {"min_accuracy": 1.5}},
        {"gate": {"review": "sometimes"}},
    ],
)
def test_a_bad_form_is_refused_before_anything_runs(fields: dict) -> None:
    with pytest.raises(ValidationError):
        DistillParams(**fields)


def test_an_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(FileNotFoundError, match="known profiles"):
        DistillParams(profile="nightly").load()


def test_evaluation_needs_the_run_it_evaluates() -> None:
    with pytest.raises(ValidationError, match="run_id"):
        EvaluateParams()
    params = EvaluateParams(run_id="r1", gate=GateParams(min_accuracy=0.9))
    assert params.load().registry.min_accuracy == 0.9


def test_the_watch_form_sets_the_watch_section() -> None:
    cfg = WatchParams(profile="smoke", sample_size=12, min_agreement=0.8).load()
    assert (cfg.watch.size, cfg.watch.min_agreement) == (12, 0.8)
