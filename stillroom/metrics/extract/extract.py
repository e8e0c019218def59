"""Field-level match of extracted JSON documents against the teacher's, as an `evaluate` metric.

Loaded by path (`stillroom.scoring.load_metric`), never from the Hub. evaluate copies this
file into its module cache and checks its imports line by line, so keep one import per line.
"""

import json
from typing import Any

import evaluate
import jsonschema

from stillroom.scoring import text_metric_info

_CITATION = """\
@misc{stillroom_extract,
  title = {Stillroom extraction match},
  note = {Document and field-level match of extracted JSON objects},
}
"""

_DESCRIPTION = """\
Scores extracted JSON documents against reference documents. A prediction is the model's raw
text; the first JSON object in it is the answer (chatter and code fences around it are
ignored; a truncated or malformed object is invalid, and no object nested in it is tried on
its own). A reference is one JSON object. Values are normalised before comparison: strings
casefolded with whitespace collapsed, numbers by value (5 == 5.0), booleans kept apart from
numbers, lists in order. Documents are compared whole (exact match) and as fields: every
leaf of the nested object is a (path, value) pair, a path joining keys with "." (a list or an
empty object is one leaf, compared whole), and precision/recall count matching pairs.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (list of str): generated texts, possibly with text around the JSON answer.
    references (list of str): reference answers, each a JSON object.
    schema (dict, optional): a JSON schema the answer must satisfy, for schema_validity_rate.
    return_rows (bool, optional): also return `rows`, one judgement per example.
Returns:
    exact_match (float): share of predictions equal to the reference after normalisation.
    validity_rate (float): share of predictions holding a well-formed JSON object.
    schema_validity_rate (float): share that are valid and satisfy `schema` (validity_rate
        when no schema is given).
    precision, recall, f1 (float): micro-averaged over all (field path, value) pairs; an
        invalid prediction contributes no pairs, so it costs recall only.
    per_field (dict): per field path, {"precision", "recall", "f1", "support"}, support being
        how many references hold that field; fields only predicted have support 0.
    count (int): number of examples scored.
    rows (list of dict, with return_rows): per example, {"valid", "schema_valid",
        "exact_match", "matched_fields", "predicted_fields", "reference_fields", "f1"}.
Raises:
    ValueError: when a reference is not a JSON object, or the schema is not a valid schema.
Examples:
    >>> metric = stillroom.scoring.load_metric("stillroom/metrics/extract")
    >>> metric.compute(
    ...     predictions=['{"city": "paris ", "n": 2.0}'], references=['{"city": "Paris"}']
    ... )
    {'exact_match': 0.0, 'validity_rate': 1.0, 'schema_validity_rate': 1.0, 'precision': 0.5,
     'recall': 1.0, 'f1': 0.666..., 'per_field': {'city': {...}, 'n': {...}}, 'count': 1}
"""

# An object right after one of these is a value inside a larger one that failed to decode
# (a truncated document), not an answer itself; see `nested_start`.
_INSIDE_VALUE_MARKERS = ("[", ",")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExtractMatch(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return text_metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION)

    def _compute(
        self,
        predictions: list[str],
        references: list[str],
        schema: dict[str, Any] | None = None,
        return_rows: bool = False,
    ) -> dict[str, Any]:
        validator = schema_validator(schema)
        rows = []
        tallies: dict[str, list[int]] = {}  # path -> [matched, predicted, support]
        for index, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
            expected = parse_reference(reference, index)
            predicted = parse_document_text(prediction)
            expected_pairs = field_pairs(expected)
            predicted_pairs = field_pairs(predicted) if predicted is not None else {}
            matched = [
                path for path, value in predicted_pairs.items() if expected_pairs.get(path) == value
            ]
            for position, paths in enumerate((matched, predicted_pairs, expected_pairs)):
                for path in paths:
                    tallies.setdefault(".".join(path), [0, 0, 0])[position] += 1
            exact = predicted is not None and predicted_pairs == expected_pairs
            counts = (len(matched), len(predicted_pairs), len(expected_pairs))
            rows.append(
                {
                    "valid": predicted is not None,
                    "schema_valid": predicted is not None
                    and (validator is None or validator.is_valid(predicted)),
                    "exact_match": exact,
                    "matched_fields": counts[0],
                    "predicted_fields": counts[1],
                    "reference_fields": counts[2],
                    # An exact match of two empty documents has no pairs, yet nothing missed.
                    "f1": 1.0 if exact else figures(*counts)["f1"],
                }
            )
        count = len(rows)
        # An empty evaluation scores 0 rather than dividing by zero; `count` tells it apart.
        denominator = count or 1
        totals = [sum(tally[position] for tally in tallies.values()) for position in range(3)]
        scores: dict[str, Any] = {
            "exact_match": sum(row["exact_match"] for row in rows) / denominator,
            "validity_rate": sum(row["valid"] for row in rows) / denominator,
            "schema_validity_rate": sum(row["schema_valid"] for row in rows) / denominator,
            **figures(*totals),
            "per_field": {
                path: figures(*tallies[path]) | {"support": tallies[path][2]}
                for path in sorted(tallies)
            },
            "count": count,
        }
        if return_rows:
            scores["rows"] = rows
        return scores


def schema_validator(schema: dict[str, Any] | None) -> Any:
    """A validator for `schema` in the draft it declares (2020-12 if none), or None."""
    if schema is None:
        return None
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.exceptions.SchemaError as error:
        raise ValueError(f"schema is not a valid JSON schema: {error.message}") from error
    return cls(schema)


def parse_reference(text: str, index: int) -> dict[str, Any]:
    """A reference document; references are teacher answers, so a bad one is a pipeline bug."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise ValueError(f"reference {index} is not a JSON object: {text!r:.200}")
    return value


def parse_document_text(text: str) -> dict[str, Any] | None:
    """The first JSON object in a generated text, or None when it holds no well-formed one.

    Braces that don't decode are skipped, so chatter and code fences are tolerated; an
    object that starts inside a larger value (after `[`, `,` or `"key":`) is never taken
    on its own, so a truncated document does not shrink into one of its parts.
    """
    decoder = json.JSONDecoder()
    for start, char in enumerate(text):
        if char != "{" or nested_start(text, start):
            continue
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        return value  # decoding from "{" yields an object or fails
    return None


def nested_start(text: str, index: int) -> bool:
    """Whether the value at `index` follows `[`, `,` or `"key":`, as values inside JSON do.

    A colon after a quote is a member key; after a word ("Answer: {...}") it is chatter.
    """
    before = text[:index].rstrip()
    if before.endswith(_INSIDE_VALUE_MARKERS):
        return True
    return before.endswith(":") and before[:-1].rstrip().endswith('"')


def normalize_value(value: Any) -> Any:
    """A value in the form used for comparison.

    Integral floats become ints (5.0 == 5) while booleans, an int subclass, pass untouched;
    strings are casefolded with runs of whitespace collapsed; keys are kept exactly.
    """
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, str):
        return " ".join(value.split()).casefold()
    if isinstance(value, list):
        return [normalize_value(item) for item in value]
    if isinstance(value, dict):
        return {key: normalize_value(item) for key, item in value.items()}
    return value


def field_pairs(document: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple, str]:
    """Each leaf's key path mapped to its normalised value as JSON (which keeps True != 1).

    Paths stay tuples here so a key containing "." can't collide with a nested one.
    """
    pairs = {}
    for key, value in document.items():
        path = (*prefix, key)
        if isinstance(value, dict) and value:
            pairs |= field_pairs(value, path)
        else:
            pairs[path] = json.dumps(normalize_value(value), sort_keys=True, ensure_ascii=False)
    return pairs


def figures(matched: int, predicted: int, support: int) -> dict[str, float]:
    """Precision, recall and F1 from counts; 0 where a ratio would divide by zero."""
    precision = matched / predicted if predicted else 0.0
    recall = matched / support if support else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
