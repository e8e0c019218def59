"""Scoring student outputs with a target's evaluate metric, loaded from the repo by path.

`evaluate` is imported on first use, not with this module: it reads HF_HOME (where it copies
metric modules) and HF_EVALUATE_OFFLINE once, at import, so importing it late lets
`env.apply_offline_env` or a test set them first. It also drags in transformers, which takes
seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stillroom.config import resolve_path
from stillroom.toolcalls import judge_prediction

if TYPE_CHECKING:
    import evaluate


def text_metric_info(
    description: str, citation: str, inputs_description: str
) -> evaluate.MetricInfo:
    """What every metric module here declares: generated texts against reference texts."""
    import datasets
    import evaluate

    features = {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
    return evaluate.MetricInfo(
        description=description,
        citation=citation,
        inputs_description=inputs_description,
        features=datasets.Features(features),
    )


def load_metric(path: str | Path) -> evaluate.EvaluationModule:
    """The metric module in folder `path` (relative to the repo root unless absolute).

    The folder must hold `<folder name>.py`; it is checked here because evaluate would
    otherwise take a missing local folder for a Hub id and go looking online.
    """
    folder = resolve_path(str(path)).resolve()
    script = folder / f"{folder.name}.py"
    if not script.is_file():
        raise FileNotFoundError(f"no metric script {script.name} in {folder}")
    import evaluate

    # In memory: inputs are a few hundred strings, and no arrow/lock files are left in the
    # shared cache for concurrent evaluations to trip over.
    return evaluate.load(str(folder), keep_in_memory=True)


def score_predictions(
    metric_path: str | Path,
    predictions: Sequence[str],
    references: Sequence[str],
    **metric_kwargs: Any,
) -> dict[str, Any]:
    """The metric's aggregate scores for generated texts against reference answers.

    `metric_kwargs` go to the metric as they are: `tools` for tool_call, `schema` for
    extract, `labels` for classify (see each module's docstring).
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    metric = load_metric(metric_path)
    scores = metric.compute(
        predictions=list(predictions), references=list(references), **metric_kwargs
    )
    return dict(scores or {})


def example_rows(
    ids: Sequence[str],
    predictions: Sequence[str],
    references: Sequence[str],
    tools: Sequence[Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per example for an evaluation table: the texts and how each tool call was judged.

    `tools` (per example, as for the tool_call metric) lets schema defaults count, so the rows
    agree with the aggregate scores when the metric was given them too.
    """
    if not len(ids) == len(predictions) == len(references):
        raise ValueError(
            f"{len(ids)} ids, {len(predictions)} predictions, {len(references)} references"
        )
    if tools is None:
        tools = [None] * len(ids)
    return [
        {"id": id_, "prediction": prediction, "reference": reference}
        | judge_prediction(prediction, reference, row_tools)
        for id_, prediction, reference, row_tools in zip(
            ids, predictions, references, tools, strict=True
        )
    ]
