import json
import os
import subprocess
import sys
import textwrap

import pytest

from stillroom.env import project_root
from stillroom.scoring import example_rows, load_metric, score_predictions
from stillroom.toolcalls import judge_prediction

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
EXPECTED = {
    "accuracy": 0.5,
    "name_accuracy": 0.75,
    "validity_rate": 0.75,
    "count": 4,
    # Each tool is named by two references, one of them matched.
    "per_tool": {
        "math_factorial": {"count": 2, "accuracy": 0.5},
        "weather": {"count": 2, "accuracy": 0.5},
    },
    "no_call": {"count": 0, "accuracy": 0.0},
}


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
    assert scores == {
        "accuracy": 0.0,
        "name_accuracy": 0.0,
        "validity_rate": 0.75,
        "count": 4,
        "per_tool": {
            "math_factorial": {"count": 2, "accuracy": 0.0},
            "weather": {"count": 2, "accuracy": 0.0},
        },
        "no_call": {"count": 0, "accuracy": 0.0},
    }


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


def calls(*pairs):
    """A compact reference/prediction from (name, arguments) pairs."""
    return json.dumps([{"name": name, "arguments": arguments} for name, arguments in pairs])


# ---------------------------------------------------------------- per tool and no call

# Six rows, judged by hand:
#   1 weather               exact                       -> weather hit
#   2 weather + time        time argument wrong         -> weather miss, time miss
#   3 time                  exact up to case/whitespace -> time hit
#   4 no call               "[]"                        -> no_call hit
#   5 no call               a call                      -> no_call miss
#   6 weather x2 (Paris, Rome), reversed: one row       -> weather hit (counted once)
# accuracy 4/6; weather 2 of 3; time 1 of 2; no_call 1 of 2.
# Names match everywhere but row 5; every prediction parses.
BREAKDOWN_REFERENCES = [
    calls(("weather", {"city": "Paris"})),
    calls(("weather", {"city": "Rome"}), ("time", {"tz": "UTC"})),
    calls(("time", {"tz": "CET"})),
    "[]",
    "[]",
    calls(("weather", {"city": "Paris"}), ("weather", {"city": "Rome"})),
]
BREAKDOWN_PREDICTIONS = [
    calls(("weather", {"city": "Paris"})),
    calls(("weather", {"city": "Rome"}), ("time", {"tz": "PST"})),
    calls(("time", {"tz": " cet"})),
    "```json\n[]\n```",
    calls(("weather", {"city": "Paris"})),
    calls(("weather", {"city": "Rome"}), ("weather", {"city": "Paris"})),
]


def test_metric_breaks_accuracy_down_by_tool_and_no_call(metric):
    scores = metric.compute(predictions=BREAKDOWN_PREDICTIONS, references=BREAKDOWN_REFERENCES)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["name_accuracy"] == pytest.approx(5 / 6)
    assert scores["validity_rate"] == 1.0
    assert scores["per_tool"] == {
        "time": {"count": 2, "accuracy": 0.5},
        "weather": {"count": 3, "accuracy": pytest.approx(2 / 3)},
    }
    assert scores["no_call"] == {"count": 2, "accuracy": 0.5}


def test_metric_returns_rows_only_when_asked(metric):
    scores = metric.compute(predictions=PREDICTIONS, references=REFERENCES, return_rows=True)
    assert scores.pop("rows") == [
        judge_prediction(prediction, reference)
        for prediction, reference in zip(PREDICTIONS, REFERENCES, strict=True)
    ]
    assert scores == EXPECTED


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("[]", (True, True, True)),
        ("No tool is needed here: []", (True, True, True)),
        # Text with no JSON answer is invalid, not "no call": a truncated call reads the same.
        ("No tool is needed here.", (False, False, False)),
        ('[{"name":"weather","argu', (False, False, False)),
        (calls(("weather", {"city": "Paris"})), (True, False, False)),
        ("{}", (False, False, False)),
    ],
)
def test_a_no_call_reference_is_matched_by_an_empty_list_only(prediction, expected):
    judged = judge_prediction(prediction, "[]")
    assert (judged["valid"], judged["name_match"], judged["exact_match"]) == expected


def test_an_empty_list_is_a_wrong_answer_when_the_reference_calls():
    assert judge_prediction("[]", REFERENCE) == {
        "valid": True,
        "name_match": False,
        "exact_match": False,
    }


# ---------------------------------------------------------------- schema defaults

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "default": "Paris"},
                "unit": {"type": "string", "default": "celsius"},
                "days": {"type": "integer", "default": 1},
                "detailed": {"type": "boolean", "default": False},
            },
            # A required argument must be given even though its schema has a default.
            "required": ["city"],
        },
    },
}
OTHER_TOOL = {
    "type": "function",
    "function": {"name": "time", "parameters": {"type": "object", "properties": {}}},
}
TOOLS = json.dumps([WEATHER_TOOL, OTHER_TOOL])  # one row's tools as the dataset stores them


def weather(**arguments):
    return calls(("weather", arguments))


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [
        (weather(city="Paris", unit="celsius"), weather(city="Paris")),
        (weather(city="paris"), weather(city="Paris", unit=" Celsius")),
        (weather(city="Paris", days=1.0), weather(city="Paris")),
        (weather(city="Paris", days=1, detailed=False), weather(city="Paris", unit="celsius")),
        (weather(city="Rome", days=3), weather(city="Rome", days=3.0, detailed=False)),
    ],
)
def test_optional_arguments_at_their_default_may_be_left_out(metric, prediction, reference):
    assert (
        metric.compute(predictions=[prediction], references=[reference], tools=[TOOLS])["accuracy"]
        == 1.0
    )
    # Without the schemas, the same pair is a miss, exactly as before tools were known.
    assert metric.compute(predictions=[prediction], references=[reference])["accuracy"] == 0.0


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [
        # A value other than the default, on either side.
        (weather(city="Paris", unit="fahrenheit"), weather(city="Paris")),
        (weather(city="Paris"), weather(city="Paris", unit="fahrenheit")),
        (weather(city="Paris", days=2), weather(city="Paris")),
        # Booleans stay booleans: 0 is not the default False, True is not the default 1.
        (weather(city="Paris", detailed=0), weather(city="Paris")),
        (weather(city="Paris", days=True), weather(city="Paris")),
        # A required argument left out fails, default or not.
        (weather(), weather(city="Paris")),
        (weather(unit="celsius"), weather(city="Paris", unit="celsius")),
    ],
)
def test_defaults_do_not_excuse_other_differences(metric, prediction, reference):
    assert (
        metric.compute(predictions=[prediction], references=[reference], tools=[TOOLS])["accuracy"]
        == 0.0
    )


@pytest.mark.parametrize(
    "tools",
    [
        TOOLS,
        [WEATHER_TOOL, OTHER_TOOL],
        [json.dumps(WEATHER_TOOL)],
        [WEATHER_TOOL["function"]],  # a bare function schema
    ],
)
def test_tools_are_read_in_each_form(metric, tools):
    prediction, reference = weather(city="Paris", unit="celsius"), weather(city="Paris")
    scores = metric.compute(predictions=[prediction], references=[reference], tools=[tools])
    assert scores["accuracy"] == 1.0


def test_defaults_apply_per_row_and_per_tool(metric):
    # Row 2 has no schemas and the `time` tool declares no default: both stay strict.
    predictions = [
        weather(city="Paris", unit="celsius"),
        weather(city="Paris", unit="celsius"),
        calls(("time", {"unit": "celsius"})),
    ]
    references = [weather(city="Paris"), weather(city="Paris"), calls(("time", {}))]
    scores = metric.compute(
        predictions=predictions, references=references, tools=[TOOLS, None, TOOLS]
    )
    assert scores["accuracy"] == pytest.approx(1 / 3)


def test_tools_must_parse_and_line_up(metric):
    with pytest.raises(ValueError, match="tools are not a list"):
        metric.compute(predictions=[REFERENCE], references=[REFERENCE], tools=["{not json"])
    with pytest.raises(ValueError, match="1 tool lists for 2 predictions"):
        metric.compute(predictions=[REFERENCE] * 2, references=[REFERENCE] * 2, tools=[TOOLS])


def test_example_rows_use_tools_like_the_metric(metric):
    prediction, reference = weather(city="Paris", unit="celsius"), weather(city="Paris")
    assert example_rows(["a"], [prediction], [reference], tools=[TOOLS])[0]["exact_match"]
    assert not example_rows(["a"], [prediction], [reference])[0]["exact_match"]


def test_score_predictions_passes_metric_arguments_through(offline_env):
    prediction, reference = weather(city="Paris", unit="celsius"), weather(city="Paris")
    assert (
        score_predictions(METRIC_PATH, [prediction], [reference], tools=[TOOLS])["accuracy"] == 1.0
    )


# ---------------------------------------------------------------- near misses

PAIR = calls(("weather", {"city": "Paris", "days": 1}), ("weather", {"city": "Rome", "days": 2}))


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [
        # A wrong number.
        (weather(city="Paris", days=3), weather(city="Paris", days=2)),
        (weather(city="Paris", days=2.5), weather(city="Paris", days=2)),
        # A required argument missing.
        (weather(days=2), weather(city="Paris", days=2)),
        # One call too many, in either form.
        (calls(("weather", {"city": "Paris"}), ("time", {})), weather(city="Paris")),
        (
            calls(("weather", {"city": "Paris"}), ("weather", {"city": "Paris"})),
            weather(city="Paris"),
        ),
        # Argument values swapped between two parallel calls.
        (
            calls(
                ("weather", {"city": "Paris", "days": 2}), ("weather", {"city": "Rome", "days": 1})
            ),
            PAIR,
        ),
        # One call of the pair missing.
        (calls(("weather", {"city": "Rome", "days": 2})), PAIR),
    ],
)
def test_near_misses_fail_with_or_without_tools(metric, prediction, reference):
    for tools in (None, [TOOLS]):
        scores = metric.compute(predictions=[prediction], references=[reference], tools=tools)
        assert scores["accuracy"] == 0.0, tools
        assert scores["validity_rate"] == 1.0


def test_parallel_order_is_free_with_tools(metric):
    reordered = calls(
        ("weather", {"city": "Rome", "days": 2, "unit": "celsius"}),
        ("weather", {"city": "Paris"}),
    )
    assert (
        metric.compute(predictions=[reordered], references=[PAIR], tools=[TOOLS])["accuracy"] == 1.0
    )
