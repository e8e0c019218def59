import os
import subprocess
import sys
import textwrap

import pytest

from stillroom.env import project_root
from stillroom.scoring import example_rows, load_metric, score_predictions

METRIC_PATH = "stillroom/metrics/tool_call"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}

REFERENCE = '[{"name":"math_factorial","arguments":{"number":5}}]'
PARALLEL = (
    '[{"name":"weather","arguments":{"city":"Paris"}},'
    '{"name":"weather","arguments":{"city":"Rome"}}]'
)
# 2 of 4 exact; 3 of 4 parse and call the right functions.
PREDICTIONS = [
    'Sure: [{"name":"math_factorial","arguments":{"number":5.0}}]',
    '[{"name":"weather","arguments":{"city":"rome"}},'
    '{"name":"weather","arguments":{"city":"Paris"}}]',
    '[{"name":"math_factorial","arguments":{"number":6}}]',
    '[{"name":"weather","arguments":{"city":"Paris"}},{"name":"weather","argu',
]
REFERENCES = [REFERENCE, PARALLEL, REFERENCE, PARALLEL]
EXPECTED = {"accuracy": 0.5, "name_accuracy": 0.75, "validity_rate": 0.75, "count": 4}


@pytest.fixture(scope="module")
def offline_env():
    # setdefault semantics, like env.apply_offline_env: a value exported on purpose is kept.
    with pytest.MonkeyPatch.context() as patch:
        for key, value in OFFLINE.items():
            patch.setenv(key, os.environ.get(key, value))
        yield


@pytest.fixture(scope="module")
def metric(offline_env):
    return load_metric(METRIC_PATH)


def test_metric_scores_a_known_set(metric):
    assert metric.compute(predictions=PREDICTIONS, references=REFERENCES) == EXPECTED


def test_metric_scores_each_example_by_its_own_reference(metric):
    swapped = [PARALLEL, REFERENCE, PARALLEL, REFERENCE]
    scores = metric.compute(predictions=PREDICTIONS, references=swapped)
    assert scores == {"accuracy": 0.0, "name_accuracy": 0.0, "validity_rate": 0.75, "count": 4}


def test_metric_rejects_a_reference_that_does_not_parse(metric):
    with pytest.raises(ValueError, match="reference 1"):
        metric.compute(predictions=[REFERENCE, REFERENCE], references=[REFERENCE, REFERENCE[:-1]])


def test_metric_loads_from_an_absolute_path(offline_env):
    metric = load_metric(project_root() / METRIC_PATH)
    assert metric.compute(predictions=[REFERENCE], references=[REFERENCE])["accuracy"] == 1.0


def test_load_metric_refuses_a_folder_without_its_script(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metric script"):
        load_metric(tmp_path)


def test_score_predictions_matches_the_metric(offline_env):
    assert score_predictions(METRIC_PATH, PREDICTIONS, REFERENCES) == EXPECTED
    with pytest.raises(ValueError, match="3 predictions for 4 references"):
        score_predictions(METRIC_PATH, PREDICTIONS[:3], REFERENCES)


def test_example_rows_judge_each_example():
    rows = example_rows(["a", "b", "c", "d"], PREDICTIONS, REFERENCES)
    assert [row["id"] for row in rows] == ["a", "b", "c", "d"]
    assert rows[0]["prediction"] == PREDICTIONS[0] and rows[0]["reference"] == REFERENCE
    assert [(row["valid"], row["name_match"], row["exact_match"]) for row in rows] == [
        (True, True, True),
        (True, True, True),
        (True, True, False),
        (False, False, False),
    ]
    with pytest.raises(ValueError):
        example_rows(["a"], PREDICTIONS, REFERENCES)


def test_metric_module_cache_follows_hf_home_set_after_import(tmp_path):
    # A fresh interpreter: in this one evaluate may already be imported with other settings.
    script = textwrap.dedent(
        f"""
        import os, sys
        import stillroom.scoring
        assert "evaluate" not in sys.modules, "scoring must import evaluate lazily"
        os.environ["HF_HOME"] = {str(tmp_path / "hf")!r}
        metric = stillroom.scoring.load_metric({METRIC_PATH!r})
        print(metric.compute(predictions=[{REFERENCE!r}], references=[{REFERENCE!r}]))
        """
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env |= OFFLINE
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=project_root(),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "'accuracy': 1.0" in result.stdout
    copies = list((tmp_path / "hf" / "modules").rglob("tool_call.py"))
    assert copies, f"no metric module copied under HF_HOME: {result.stderr[-2000:]}"
