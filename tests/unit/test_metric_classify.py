import os

import pytest

from stillroom.env import project_root
from stillroom.scoring import load_metric, score_predictions

METRIC_PATH = "stillroom/metrics/classify"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}
LABELS = ["positive", "negative", "neutral"]


@pytest.fixture(scope="module")
def offline_env():
    with pytest.MonkeyPatch.context() as patch:
        for key, value in OFFLINE.items():
            patch.setenv(key, os.environ.get(key, value))
        yield


@pytest.fixture(scope="module")
def metric(offline_env):
    return load_metric(METRIC_PATH)


# (reference, prediction) -> what the prediction reads as:
PAIRS = [
    ("positive", "positive"),  # positive
    ("positive", '{"label": "Positive"}'),  # positive
    ("positive", "negative"),  # negative
    ("negative", "  NEGATIVE\n"),  # negative
    ('{"label":"negative"}', 'The answer is "neutral".'),  # neutral (first JSON string)
    ("negative", "not positive"),  # invalid: no substring search
    ("neutral", "neutral"),  # neutral
    ("neutral", "positive"),  # positive
    ("neutral", '{"sentiment": "neutral"}'),  # invalid: an object without "label"
]
REFERENCES = [reference for reference, _ in PAIRS]
PREDICTIONS = [prediction for _, prediction in PAIRS]
# Rows reference, columns prediction (positive, negative, neutral, <invalid>):
#   positive  [2, 1, 0, 0]
#   negative  [0, 1, 1, 1]
#   neutral   [1, 0, 1, 1]
# accuracy 4/9, validity 7/9. Per label, with F1 = 2 hits / (predicted + support):
#   positive  hits 2, predicted 3, support 3 -> P 2/3, R 2/3, F1 2/3
#   negative  hits 1, predicted 2, support 3 -> P 1/2, R 1/3, F1 2/5
#   neutral   hits 1, predicted 2, support 3 -> P 1/2, R 1/3, F1 2/5
# macro-F1 = (2/3 + 2/5 + 2/5) / 3 = 22/45.
MATRIX = [[2, 1, 0, 0], [0, 1, 1, 1], [1, 0, 1, 1]]
PER_LABEL = {
    "positive": (2 / 3, 2 / 3, 2 / 3, 3),
    "negative": (1 / 2, 1 / 3, 2 / 5, 3),
    "neutral": (1 / 2, 1 / 3, 2 / 5, 3),
}


def approx_figures(precision, recall, f1, support):
    return {
        "precision": pytest.approx(precision),
        "recall": pytest.approx(recall),
        "f1": pytest.approx(f1),
        "support": support,
    }


def test_metric_scores_a_known_set(metric):
    scores = metric.compute(predictions=PREDICTIONS, references=REFERENCES, labels=LABELS)
    assert scores == {
        "accuracy": pytest.approx(4 / 9),
        "macro_f1": pytest.approx(22 / 45),
        "per_label": {label: approx_figures(*PER_LABEL[label]) for label in LABELS},
        "confusion_matrix": {
            "labels": LABELS,
            "columns": [*LABELS, "<invalid>"],
            "matrix": MATRIX,
        },
        "validity_rate": pytest.approx(7 / 9),
        "count": 9,
    }


def test_labels_default_to_the_sorted_reference_labels(metric):
    scores = metric.compute(predictions=PREDICTIONS, references=REFERENCES)
    assert scores["confusion_matrix"]["labels"] == ["negative", "neutral", "positive"]
    # The same counts with rows and columns reordered to negative, neutral, positive.
    assert scores["confusion_matrix"]["matrix"] == [[1, 1, 0, 1], [0, 1, 1, 1], [1, 0, 2, 0]]
    assert scores["macro_f1"] == pytest.approx(22 / 45)


def test_a_label_nobody_used_is_left_out_of_macro_f1(metric):
    scores = metric.compute(
        predictions=PREDICTIONS, references=REFERENCES, labels=[*LABELS, "mixed"]
    )
    assert scores["macro_f1"] == pytest.approx(22 / 45)
    assert scores["per_label"]["mixed"] == approx_figures(0.0, 0.0, 0.0, 0)
    assert scores["confusion_matrix"]["matrix"][-1] == [0, 0, 0, 0, 0]


def test_a_label_only_predicted_counts_against_macro_f1(metric):
    # spam: hits 1, predicted 1, support 2 -> F1 2/3; ham: predicted once, never right -> 0.
    scores = metric.compute(
        predictions=["spam", "ham"], references=["spam", "spam"], labels=["spam", "ham"]
    )
    assert scores["macro_f1"] == pytest.approx(1 / 3)
    assert scores["accuracy"] == 0.5


def test_rows_judge_each_example_when_asked(metric):
    scores = metric.compute(
        predictions=PREDICTIONS, references=REFERENCES, labels=LABELS, return_rows=True
    )
    assert [row["predicted_label"] for row in scores["rows"]] == [
        "positive",
        "positive",
        "negative",
        "negative",
        "neutral",
        None,
        "neutral",
        "positive",
        None,
    ]
    assert [row["exact_match"] for row in scores["rows"]] == [
        True,
        True,
        False,
        True,
        False,
        False,
        True,
        False,
        False,
    ]
    assert scores["rows"][4]["reference_label"] == "negative"
    assert not any(row["valid"] for row in scores["rows"] if row["predicted_label"] is None)


@pytest.mark.parametrize(
    "prediction",
    [
        "negative",
        "Negative",
        " \n NEGATIVE \n",
        '"negative"',
        '{"label": "negative"}',
        '{"reasoning": "sounds unhappy", "label": " Negative"}',
        'Label: {"label": "negative"} (confident)',
        '```json\n{"label": "negative"}\n```',
        'It reads as "negative" to me.',
    ],
)
def test_the_label_is_found_in_each_form(metric, prediction):
    scores = metric.compute(predictions=[prediction], references=["negative"], labels=LABELS)
    assert scores["accuracy"] == 1.0


@pytest.mark.parametrize(
    "prediction",
    [
        "",
        "not negative",
        "negative.",
        "The review is negative",
        "negativ",
        # Truncated or mislabelled JSON.
        '{"label": "negative"',
        '{"labels": "negative"}',
        '{"label": ["negative"]}',
        # The first JSON value decides, even when a label follows it.
        '["negative"]',
        '{"thought": "hmm"} {"label": "negative"}',
        '"neutral" or "negative"',
    ],
)
def test_near_misses_do_not_count_as_the_label(metric, prediction):
    scores = metric.compute(predictions=[prediction], references=["negative"], labels=LABELS)
    assert scores["accuracy"] == 0.0


def test_bad_references_and_labels_are_errors(metric):
    with pytest.raises(ValueError, match="reference 1 is not one of the labels"):
        metric.compute(
            predictions=["positive"] * 2, references=["positive", "great"], labels=LABELS
        )
    with pytest.raises(ValueError, match="distinct"):
        metric.compute(predictions=["a"], references=["a"], labels=["a", "A"])


def test_metric_loads_from_an_absolute_path_and_through_score_predictions(offline_env):
    metric = load_metric(project_root() / METRIC_PATH)
    assert metric.compute(predictions=["neutral"], references=["neutral"])["accuracy"] == 1.0
    scores = score_predictions(METRIC_PATH, PREDICTIONS, REFERENCES, labels=LABELS)
    assert scores["confusion_matrix"]["matrix"] == MATRIX
