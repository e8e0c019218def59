"""Tool-call accuracy of generated answers against the teacher's, as an `evaluate` metric.

Loaded by path (`stillroom.scoring.load_metric`), never from the Hub. evaluate copies this
file into its module cache and checks its imports line by line, so keep one import per line.
"""

from typing import Any

import evaluate

from stillroom.scoring import text_metric_info
from stillroom.toolcalls import judge_prediction, parse_tool_calls_json

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
surrounding whitespace. Given the tool schemas, an optional argument equal to its schema
default matches one left out. A reference `[]` means no call: only a prediction `[]` matches.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (list of str): generated texts, possibly with text around the JSON answer.
    references (list of str): reference answers, each a JSON list of tool calls.
    tools (list, optional): per example, the tools offered (OpenAI tool schemas), as a JSON
        string or a list; used only for parameter defaults. Without it, defaults are ignored.
    return_rows (bool, optional): also return `rows`, one judgement per example.
Returns:
    accuracy (float): share of predictions whose calls match the reference exactly.
    name_accuracy (float): share of predictions calling the same multiset of functions.
    validity_rate (float): share of predictions that parse as a list of tool calls.
    count (int): number of examples scored.
    per_tool (dict): per function named in the references, {"count", "accuracy"}: the
        examples whose reference calls it, and the share of those matched exactly.
    no_call (dict): {"count", "accuracy"} over the examples whose reference is `[]`.
    rows (list of dict, with return_rows): per example, {"valid", "name_match", "exact_match"}.
Raises:
    ValueError: when a reference is not a JSON list of tool calls, or tools don't parse.
Examples:
    >>> metric = stillroom.scoring.load_metric("stillroom/metrics/tool_call")
    >>> metric.compute(
    ...     predictions=['[{"name":"f","arguments":{"x":5.0}}]'],
    ...     references=['[{"name":"f","arguments":{"x":5}}]'],
    ... )
    {'accuracy': 1.0, 'name_accuracy': 1.0, 'validity_rate': 1.0, 'count': 1,
     'per_tool': {'f': {'count': 1, 'accuracy': 1.0}}, 'no_call': {'count': 0, 'accuracy': 0.0}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ToolCallMatch(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return text_metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION)

    def _compute(
        self,
        predictions: list[str],
        references: list[str],
        tools: list[Any] | None = None,
        return_rows: bool = False,
    ) -> dict[str, Any]:
        if tools is None:
            tools = [None] * len(predictions)
        if len(tools) != len(predictions):
            raise ValueError(f"{len(tools)} tool lists for {len(predictions)} predictions")
        judged = []
        for index, row in enumerate(zip(predictions, references, tools, strict=True)):
            try:
                judged.append(judge_prediction(*row))
            except ValueError as error:
                raise ValueError(f"reference {index}: {error}") from error
        count = len(judged)
        # An empty evaluation scores 0 rather than dividing by zero; `count` tells it apart.
        denominator = count or 1
        scores: dict[str, Any] = {
            "accuracy": sum(row["exact_match"] for row in judged) / denominator,
            "name_accuracy": sum(row["name_match"] for row in judged) / denominator,
            "validity_rate": sum(row["valid"] for row in judged) / denominator,
            "count": count,
        }
        expected = [parse_tool_calls_json(reference) for reference in references]
        scores |= breakdown_by_tool(expected, [row["exact_match"] for row in judged])
        if return_rows:
            scores["rows"] = judged
        return scores


def breakdown_by_tool(expected: list[list[dict[str, Any]]], exact: list[bool]) -> dict[str, Any]:
    """Accuracy per function the references call, and over the references that call none.

    A row calling several functions counts once toward each, judged by its own exact match:
    a row with one wrong call of two is a miss for both tools it names.
    """
    tallies: dict[str, list[int]] = {}
    no_call = [0, 0]
    for calls, correct in zip(expected, exact, strict=True):
        names = {call["name"] for call in calls}
        for tally in [tallies.setdefault(name, [0, 0]) for name in names] or [no_call]:
            tally[0] += 1
            tally[1] += correct
    return {
        "per_tool": {name: share(*tallies[name]) for name in sorted(tallies)},
        "no_call": share(*no_call),
    }


def share(count: int, correct: int) -> dict[str, Any]:
    return {"count": count, "accuracy": correct / count if count else 0.0}
