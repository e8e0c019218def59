import json
import os

import pytest

from stillroom.env import project_root
from stillroom.scoring import load_metric, score_predictions

METRIC_PATH = "stillroom/metrics/extract"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}


@pytest.fixture(scope="module")
def offline_env():
    with pytest.MonkeyPatch.context() as patch:
        for key, value in OFFLINE.items():
            patch.setenv(key, os.environ.get(key, value))
        yield


@pytest.fixture(scope="module")
def metric(offline_env):
    return load_metric(METRIC_PATH)


def doc(**fields):
    return json.dumps(fields)


# Four rows, field pairs counted by hand (a list is one leaf, compared in order):
#   1 all 4 fields right, up to case, spacing and 36 == 36.0       matched 4 / predicted 4 / ref 4
#   2 age wrong, zip left out, an extra field                       matched 2 / predicted 4 / ref 4
#   3 truncated: invalid, no pairs                                  matched 0 / predicted 0 / ref 4
#   4 tags reordered                                                matched 2 / predicted 3 / ref 3
# micro: precision 8/11, recall 8/15, f1 = 2*8 / (11 + 15) = 8/13; exact 1/4; valid 3/4.
REFERENCES = [
    doc(name="Ada Lovelace", age=36, address={"city": "London", "zip": "W1"}),
    doc(name="Alan Turing", age=41, address={"city": "Wilmslow", "zip": "SK9"}),
    doc(name="Grace Hopper", age=85, address={"city": "Arlington", "zip": "22201"}),
    doc(name="Linus", age=54, tags=["kernel", "git"]),
]
PREDICTIONS = [
    'Sure! ```json\n{"name": " ada  LOVELACE ", "age": 36.0, '
    '"address": {"city": "london", "zip": "W1"}}\n```',
    doc(name="Alan Turing", age=42, address={"city": "Wilmslow"}, extra=True),
    '{"name": "Grace Hopper", "age": 85, "address": {"city": "Arlington", "zip": "22201"',
    doc(name="linus", age=54, tags=["git", "kernel"]),
]
# Per field, (matched, predicted, support) -> precision, recall, f1 = 2m / (p + s):
#   name          3, 3, 4 -> 1,   3/4, 6/7
#   age           2, 3, 4 -> 2/3, 1/2, 4/7
#   address.city  2, 2, 3 -> 1,   2/3, 4/5
#   address.zip   1, 1, 3 -> 1,   1/3, 1/2
#   tags          0, 1, 1 -> 0,   0,   0
#   extra         0, 1, 0 -> 0,   0,   0   (only predicted: support 0)
PER_FIELD = {
    "address.city": (1.0, 2 / 3, 4 / 5, 3),
    "address.zip": (1.0, 1 / 3, 1 / 2, 3),
    "age": (2 / 3, 1 / 2, 4 / 7, 4),
    "extra": (0.0, 0.0, 0.0, 0),
    "name": (1.0, 3 / 4, 6 / 7, 4),
    "tags": (0.0, 0.0, 0.0, 1),
}
# Rows 1 and 4 satisfy it; row 2 has a field it forbids; row 3 is invalid. 36.0 is an
# integer to JSON schema.
SCHEMA = {
    "type": "object",
    "required": ["name", "age"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "address": {"type": "object"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}


def test_metric_scores_a_known_set(metric):
    scores = metric.compute(predictions=PREDICTIONS, references=REFERENCES, schema=SCHEMA)
    per_field = scores.pop("per_field")
    assert scores == {
        "exact_match": 0.25,
        "validity_rate": 0.75,
        "schema_validity_rate": 0.5,
        "precision": pytest.approx(8 / 11),
        "recall": pytest.approx(8 / 15),
        "f1": pytest.approx(8 / 13),
        "count": 4,
    }
    assert list(per_field) == sorted(PER_FIELD)
    for path, (precision, recall, f1, support) in PER_FIELD.items():
        assert per_field[path] == {
            "precision": pytest.approx(precision),
            "recall": pytest.approx(recall),
            "f1": pytest.approx(f1),
            "support": support,
        }, path


def test_schema_validity_is_validity_without_a_schema(metric):
    scores = metric.compute(predictions=PREDICTIONS, references=REFERENCES)
    assert scores["schema_validity_rate"] == scores["validity_rate"] == 0.75


def test_rows_judge_each_example_when_asked(metric):
    scores = metric.compute(
        predictions=PREDICTIONS, references=REFERENCES, schema=SCHEMA, return_rows=True
    )
    rows = scores["rows"]
    assert [
        (r["valid"], r["schema_valid"], r["exact_match"], r["matched_fields"]) for r in rows
    ] == [
        (True, True, True, 4),
        (True, False, False, 2),
        (False, False, False, 0),
        (True, True, False, 2),
    ]
    assert [(r["predicted_fields"], r["reference_fields"]) for r in rows] == [
        (4, 4),
        (4, 4),
        (0, 4),
        (3, 3),
    ]
    assert rows[0]["f1"] == 1.0 and rows[2]["f1"] == 0.0
    assert rows[1]["f1"] == pytest.approx(0.5)  # 2 * 2 / (4 + 4)
    assert "rows" not in metric.compute(predictions=PREDICTIONS, references=REFERENCES)


REFERENCE = doc(name="Ada Lovelace", age=36, active=True, address={"city": "London"}, email=None)
REORDERED = doc(email=None, address={"city": "London"}, active=True, age=36, name="Ada Lovelace")


@pytest.mark.parametrize(
    "prediction",
    [
        REFERENCE,
        '{"name":"ADA   lovelace","age":36.0,"active":true,"address":{"city":" london"},'
        '"email":null}',
        # Key order is free; so is the text around the object.
        f"Here you go:\n```json\n{REORDERED}\n```\nDone.",
        f"Answer: {REFERENCE}",
        f"{REFERENCE}\n{REFERENCE}",
        f"{{not json}} {REFERENCE}",
    ],
)
def test_exact_match_up_to_normalisation(metric, prediction):
    scores = metric.compute(predictions=[prediction], references=[REFERENCE])
    assert (scores["exact_match"], scores["f1"]) == (1.0, 1.0)


@pytest.mark.parametrize(
    ("prediction", "f1"),
    [
        # A wrong number; a number as a string; a boolean as a number.
        (
            doc(name="Ada Lovelace", age=37, active=True, address={"city": "London"}, email=None),
            0.8,
        ),
        (
            doc(name="Ada Lovelace", age="36", active=True, address={"city": "London"}, email=None),
            0.8,
        ),
        (doc(name="Ada Lovelace", age=36, active=1, address={"city": "London"}, email=None), 0.8),
        # A misspelt string, not just a case or spacing difference.
        (doc(name="Ada Lovelace", age=36, active=True, address={"city": "Londn"}, email=None), 0.8),
        (doc(name="AdaLovelace", age=36, active=True, address={"city": "London"}, email=None), 0.8),
        # A field left out (null is a value, not an absence); a field added.
        (doc(name="Ada Lovelace", age=36, active=True, address={"city": "London"}), 8 / 9),
        (
            doc(
                name="Ada Lovelace",
                age=36,
                active=True,
                address={"city": "London"},
                email=None,
                x=1,
            ),
            10 / 11,
        ),
        # A nested field moved to the top level.
        (doc(name="Ada Lovelace", age=36, active=True, city="London", email=None), 0.8),
    ],
)
def test_near_misses_are_not_exact(metric, prediction, f1):
    scores = metric.compute(predictions=[prediction], references=[REFERENCE])
    assert scores["validity_rate"] == 1.0
    assert scores["exact_match"] == 0.0
    assert scores["f1"] == pytest.approx(f1)


@pytest.mark.parametrize(
    "prediction",
    [
        "",
        "name: Ada Lovelace, age: 36",
        # Truncated: no part of the object may pass for the answer.
        REFERENCE[:-1],
        '{"name": "Ada Lovelace", "address": {"city": "London"}, "age": ',
        '{"items": [{"name": "Ada Lovelace"}, {"name": ',
        # A list is not an object, and an object inside it is not the answer.
        f"[{REFERENCE}]",
        # After a comma an object looks like the tail of a list, even in chatter.
        f"Sure, {REFERENCE}",
        # Single quotes are not JSON.
        "{'name': 'Ada Lovelace'}",
    ],
)
def test_text_without_a_well_formed_object_is_invalid(metric, prediction):
    scores = metric.compute(predictions=[prediction], references=[REFERENCE], return_rows=True)
    assert scores["validity_rate"] == 0.0
    assert (scores["exact_match"], scores["precision"], scores["recall"]) == (0.0, 0.0, 0.0)
    assert scores["rows"][0]["predicted_fields"] == 0


def test_empty_documents_match_exactly(metric):
    scores = metric.compute(predictions=["{}"], references=["{}"], return_rows=True)
    assert scores["exact_match"] == 1.0 and scores["rows"][0]["f1"] == 1.0
    # An empty nested object is a value of its own, not nothing.
    assert metric.compute(predictions=["{}"], references=[doc(a={})])["exact_match"] == 0.0


def test_bad_references_and_schemas_are_errors(metric):
    with pytest.raises(ValueError, match="reference 1 is not a JSON object"):
        metric.compute(predictions=[REFERENCE] * 2, references=[REFERENCE, "[1, 2]"])
    with pytest.raises(ValueError, match="reference 0 is not a JSON object"):
        metric.compute(predictions=[REFERENCE], references=[f"Sure: {REFERENCE}"])
    with pytest.raises(ValueError, match="not a valid JSON schema"):
        metric.compute(predictions=[REFERENCE], references=[REFERENCE], schema={"type": 5})


def test_metric_loads_from_an_absolute_path_and_through_score_predictions(offline_env):
    metric = load_metric(project_root() / METRIC_PATH)
    assert metric.compute(predictions=[REFERENCE], references=[REFERENCE])["exact_match"] == 1.0
    scores = score_predictions(METRIC_PATH, PREDICTIONS, REFERENCES, schema=SCHEMA)
    assert scores["schema_validity_rate"] == 0.5
