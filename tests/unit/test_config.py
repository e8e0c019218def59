from pathlib import Path

import pytest
from pydantic import ValidationError

from stillroom.config import load_config, parse_override


def test_profile_and_overrides_layer_over_base() -> None:
    cfg = load_config("smoke", ["training.max_steps=7", "registry.min_accuracy=0.25"])
    assert cfg.profile == "smoke"
    assert cfg.student.base_model == "tiny"  # from the profile
    assert cfg.training.max_steps == 7  # from the override, beating the profile's 4
    assert cfg.registry.min_accuracy == 0.25
    assert cfg.teacher.concurrency == 8  # untouched base default


def test_override_values_are_typed() -> None:
    assert parse_override("a.b=3") == {"a": {"b": 3}}
    assert parse_override("a=[x, y]") == {"a": ["x", "y"]}
    with pytest.raises(ValueError):
        parse_override("no-equals-sign")


def test_a_date_given_on_the_command_line_stays_text() -> None:
    # YAML would read it as a date object, which no string field accepts.
    assert load_config(None, ["seed.date=2026-12-04"]).seed.date == "2026-12-04"


def test_unknown_keys_are_errors() -> None:
    with pytest.raises(ValidationError):
        load_config(None, ["training.max_stpes=3"])


def test_unknown_profile_lists_known_ones() -> None:
    with pytest.raises(FileNotFoundError, match="smoke"):
        load_config("nope")


def test_no_secret_values_in_config() -> None:
    # The config names the env var holding the key; dumping it can never leak the key.
    dumped = load_config("demo").model_dump_json()
    assert "STILLROOM_TEACHER_API_KEY" in dumped
    assert "sk-" not in dumped


def test_every_yaml_profile_loads() -> None:
    for path in (Path(__file__).parents[2] / "configs" / "profiles").glob("*.yaml"):
        load_config(path.stem)
