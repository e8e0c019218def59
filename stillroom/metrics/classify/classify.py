"""Label accuracy, macro-F1 and confusion of generated answers, as an `evaluate` metric.

Loaded by path (`stillroom.scoring.load_metric`), never from the Hub. evaluate copies this
file into its module cache and checks its imports line by line, so keep one import per line.
"""

import json
from typing import Any

import evaluate

from stillroom.scoring import text_metric_info

_CITATION = """\
@misc{stillroom_classify,
  title = {Stillroom label match},
  note = {Accuracy, macro-F1 and confusion matrix of generated labels},
}
"""

_DESCRIPTION = """\
Scores generated labels against reference labels. A prediction is the model's raw text; its
label is the first JSON string, object or list in it (an object's "label" member; an object
without a string "label", or a list, is invalid), or, when the text holds none, the whole text
stripped. That label must equal one of the allowed labels, ignoring case and runs of
whitespace; anything else is invalid. No substring search: "not positive" is not "positive".
References must be exactly a label, bare or as JSON (a string or an object's "label").
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (list of str): generated texts.
    references (list of str): reference labels, bare ("positive") or as JSON
        ('{"label": "positive"}').
    labels (list of str, optional): the allowed labels, in the order reported. Without it,
        the distinct reference labels, sorted; a correct label the references never use
        then counts as invalid, so pass it whenever the label set is known.
    return_rows (bool, optional): also return `rows`, one judgement per example.
Returns:
    accuracy (float): share of predictions whose label is the reference label.
    macro_f1 (float): unweighted mean of per-label F1 over the labels that occur in the
        references or the valid predictions (a label nobody used or predicted is left out).
    per_label (dict): per allowed label, {"precision", "recall", "f1", "support"}.
    confusion_matrix (dict): {"labels", "columns", "matrix"}; matrix[i][j] counts examples
        with reference labels[i] predicted as columns[j], columns being the labels then
        "<invalid>" for predictions that match no label.
    validity_rate (float): share of predictions that map to an allowed label.
    count (int): number of examples scored.
    rows (list of dict, with return_rows): per example, {"valid", "exact_match",
        "predicted_label", "reference_label"}; predicted_label is None when invalid.
Raises:
    ValueError: when a reference is not one of the labels, or two labels differ only in case.
Examples:
    >>> metric = stillroom.scoring.load_metric("stillroom/metrics/classify")
    >>> metric.compute(
    ...     predictions=['{"label": "Spam"}'], references=["spam"], labels=["spam", "ham"]
    ... )
"""

INVALID = "<invalid>"


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LabelMatch(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return text_metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION)

    def _compute(
        self,
        predictions: list[str],
        references: list[str],
        labels: list[str] | None = None,
        return_rows: bool = False,
    ) -> dict[str, Any]:
        stated = [reference_label(reference) for reference in references]
        labels = list(labels) if labels is not None else reference_labels(stated)
        by_key = label_index(labels)
        rows = []
        for index, (prediction, reference) in enumerate(zip(predictions, stated, strict=True)):
            expected = by_key.get(label_key(reference))
            if expected is None:
                raise ValueError(f"reference {index} is not one of the labels: {reference!r}")
            predicted = by_key.get(label_key(candidate_label(prediction)))
            rows.append(
                {
                    "valid": predicted is not None,
                    "exact_match": predicted == expected,
                    "predicted_label": predicted,
                    "reference_label": expected,
                }
            )
        count = len(rows)
        # An empty evaluation scores 0 rather than dividing by zero; `count` tells it apart.
        denominator = count or 1
        matrix = confusion(rows, labels)
        per_label = label_figures(matrix, labels)
        used = [
            label
            for position, label in enumerate(labels)
            if per_label[label]["support"] or sum(row[position] for row in matrix)
        ]
        scores: dict[str, Any] = {
            "accuracy": sum(row["exact_match"] for row in rows) / denominator,
            "macro_f1": sum(per_label[label]["f1"] for label in used) / (len(used) or 1),
            "per_label": per_label,
            "confusion_matrix": {"labels": labels, "columns": [*labels, INVALID], "matrix": matrix},
            "validity_rate": sum(row["valid"] for row in rows) / denominator,
            "count": count,
        }
        if return_rows:
            scores["rows"] = rows
        return scores


def candidate_label(text: str) -> str:
    """The label a text states: its first JSON string, or first object's "label", or itself.

    The first JSON string, object or list decides; an object without a string "label", or a
    list, gives "" (no label). Brackets and quotes that don't decode are chatter and skipped;
    nothing inside a decoded value is looked at on its own.
    """
    decoder = json.JSONDecoder()
    for start, char in enumerate(text):
        if char not in '{["':
            continue
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            value = value.get("label")
        return value if isinstance(value, str) else ""
    return text


def reference_label(text: str) -> str:
    """The label a reference states: the whole text, as JSON (string or object) or bare."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    if isinstance(value, dict):
        value = value.get("label")
    # A bare label that happens to be JSON of another kind ("1", "true") is still the text.
    return value if isinstance(value, str) else text


def reference_labels(stated: list[str]) -> list[str]:
    """The distinct labels the references state, sorted, each spelled as first seen."""
    by_key: dict[str, str] = {}
    for label in stated:
        by_key.setdefault(label_key(label), " ".join(label.split()))
    return sorted(by_key.values())


def label_key(label: str) -> str:
    """How labels compare: casefolded, with runs of whitespace as one space, ends trimmed."""
    return " ".join(label.split()).casefold()


def label_index(labels: list[str]) -> dict[str, str]:
    """Each label's comparison key mapped to the label as given."""
    by_key: dict[str, str] = {}
    for label in labels:
        key = label_key(label)
        if not key or key in by_key:
            raise ValueError(f"labels must be distinct and non-empty ignoring case: {labels!r}")
        by_key[key] = label
    return by_key


def confusion(rows: list[dict[str, Any]], labels: list[str]) -> list[list[int]]:
    """Counts with rows the reference label, columns the predicted label then invalid."""
    position = {label: index for index, label in enumerate(labels)}
    matrix = [[0] * (len(labels) + 1) for _ in labels]
    for row in rows:
        predicted = row["predicted_label"]
        column = len(labels) if predicted is None else position[predicted]
        matrix[position[row["reference_label"]]][column] += 1
    return matrix


def label_figures(matrix: list[list[int]], labels: list[str]) -> dict[str, dict[str, Any]]:
    """Per label, precision over its predictions and recall over its references.

    An invalid prediction is a miss for its reference's label and a prediction of none.
    """
    figures = {}
    for index, label in enumerate(labels):
        hits = matrix[index][index]
        predicted = sum(row[index] for row in matrix)
        support = sum(matrix[index])
        precision = hits / predicted if predicted else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        figures[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return figures
