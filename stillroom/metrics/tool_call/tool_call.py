"""Tool-call accuracy of generated answers against the teacher's, as an `evaluate` metric.

Loaded by path (`stillroom.scoring.load_metric`), never from the Hub. evaluate copies this
file into its module cache and checks its imports line by line, so keep one import per line.
"""

import datasets
import evaluate

from stillroom.toolcalls import judge_prediction

_CITATION = """\
@misc{stillroom_tool_call,
  title = {Stillroom tool-call match},
  note = {Exact and function-name match of JSON tool calls, parallel order ignored},
}
"""

_DESCRIPTION = """\
Scores generated tool calls against reference tool calls. A prediction is the model's raw text;
the first JSON list (or single call object) in it is taken as the answer. A reference is the
compact JSON list of {"name", "arguments"} calls. Calls match when the multisets of
(name, normalised arguments) are equal: the order of parallel calls is free, their count is not;
numbers compare by value (5 == 5.0) but booleans stay booleans, strings ignore case and
surrounding whitespace.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (list of str): generated texts, possibly with text around the JSON answer.
    references (list of str): reference answers, each a JSON list of tool calls.
Returns:
    accuracy (float): share of predictions whose calls match the reference exactly.
    name_accuracy (float): share of predictions calling the same multiset of functions.
    validity_rate (float): share of predictions that parse as a list of tool calls.
    count (int): number of examples scored.
Raises:
    ValueError: when a reference is not a JSON list of tool calls.
Examples:
    >>> metric = stillroom.scoring.load_metric("stillroom/metrics/tool_call")
    >>> metric.compute(
    ...     predictions=['[{"name":"f","arguments":{"x":5.0}}]'],
    ...     references=['[{"name":"f","arguments":{"x":5}}]'],
    ... )
    {'accuracy': 1.0, 'name_accuracy': 1.0, 'validity_rate': 1.0, 'count': 1}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ToolCallMatch(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        judged = []
        for index, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
            try:
                judged.append(judge_prediction(prediction, reference))
            except ValueError as error:
                raise ValueError(f"reference {index}: {error}") from error
        count = len(judged)
        # An empty evaluation scores 0 rather than dividing by zero; `count` tells it apart.
        denominator = count or 1
        return {
            "accuracy": sum(row["exact_match"] for row in judged) / denominator,
            "name_accuracy": sum(row["name_match"] for row in judged) / denominator,
            "validity_rate": sum(row["valid"] for row in judged) / denominator,
            "count": count,
        }
