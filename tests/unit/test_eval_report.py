"""Serving figures, worst misses and the written report, on hand-made evaluation results."""

import json
from pathlib import Path

import pytest

from stillroom.config import EvalConfig
from stillroom.eval_report import comparison_rows, cost_ratio, write_report
from stillroom.evaluation import (
    EvalReport,
    percentile,
    serving_figures,
    teacher_figures,
    worst_examples,
)


def call(name: str, **arguments: object) -> str:
    return json.dumps([{"name": name, "arguments": arguments}])


def row(id_: str, reference: str, prediction: str, valid: bool, name: bool, exact: bool) -> dict:
    return {
        "id": id_,
        "reference": reference,
        "prediction": prediction,
        "valid": valid,
        "name_match": name,
        "exact_match": exact,
    }


CANDIDATE = EvalReport(
    model_dir="m",
    metrics={"accuracy": 0.5, "validity_rate": 0.75, "name_accuracy": 0.75}
    | {
        "per_tool": {
            "weather": {"count": 2, "accuracy": 0.5},
            "stocks": {"count": 2, "accuracy": 0.5},
        }
    }
    | serving_figures(400.0, [300.0, 320.0, 900.0, 310.0], EvalConfig()),
    rows=[
        row("a", call("weather", city="Paris"), call("weather", city="Paris"), True, True, True),
        row("b", call("weather", city="Rome"), call("weather", city="Roma"), True, True, False),
        row("c", call("stocks", symbol="X"), call("stocks", symbol="X"), True, True, True),
        row("d", call("stocks", symbol="Y"), "[{'name'", False, False, False),
    ],
    latencies_ms=[300.0, 320.0, 900.0, 310.0],
)
TEST_ROWS = [
    {"id": i, "messages": json.dumps([{"role": "user", "content": f"ask {i}"}])} for i in "abcd"
]


def test_percentiles_are_observed_values() -> None:
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert percentile([float(i) for i in range(1, 101)], 95) == 95.0
    assert percentile([7.0], 95) == 7.0


def test_serving_figures_price_the_batched_rate() -> None:
    figures = serving_figures(400.0, [300.0, 320.0, 900.0, 310.0], EvalConfig())
    assert figures["throughput_per_s"] == 2.5
    assert figures["latency_p50_ms"] == 310.0 and figures["latency_p95_ms"] == 900.0
    # 0.4 s a request: 400 s per 1k at $0.10/h.
    assert figures["cost_per_1k_usd"] == pytest.approx(400 / 3600 * 0.10, abs=1e-6)


def test_teacher_figures_come_from_the_labelling_records() -> None:
    labelled = [{"latency_ms": v} for v in (100.0, 200.0, 300.0, 400.0)]
    figures = teacher_figures(labelled, 1.5)
    assert figures == {"latency_p50_ms": 200.0, "latency_p95_ms": 400.0, "cost_per_1k_usd": 1.5}


def test_worst_misses_put_unparsable_answers_first_and_carry_the_input() -> None:
    worst = worst_examples(CANDIDATE, TEST_ROWS, limit=5)
    assert [w["id"] for w in worst] == ["d", "b"]
    assert worst[0]["verdict"] == "invalid" and worst[1]["verdict"] == "wrong arguments"
    assert worst[1]["input"] == "ask b" and "Rome" in worst[1]["teacher"]


def test_comparison_and_cost_ratio_against_the_teacher() -> None:
    rows = comparison_rows({"baseline": None, "candidate": CANDIDATE}, {"cost_per_1k_usd": 1.11})
    assert [r["model"] for r in rows] == ["candidate", "teacher"]
    assert cost_ratio(rows) == pytest.approx(1.11 / (400 / 3600 * 0.10), rel=1e-3)


def test_report_is_written_with_plots(tmp_path: Path) -> None:
    written = write_report(
        tmp_path, "run x", {"candidate": CANDIDATE}, {"cost_per_1k_usd": 1.0}, [], "kept"
    )
    names = {p.name for p in tmp_path.iterdir()}
    assert {"report.md", "report.html", "comparison.png", "per_tool.png", "latency.png"} <= names
    assert "| candidate | 0.5000 | 0.7500 |" in written["markdown"]
    assert "<td>candidate</td>" in (tmp_path / "report.html").read_text()
    # Without per-tool figures (an extract or classify target) there is no per-tool plot.
    plain = EvalReport(model_dir="m", metrics={"accuracy": 0.5})
    write_report(tmp_path / "plain", "run y", {"candidate": plain}, {}, [], "kept")
    assert not (tmp_path / "plain" / "per_tool.png").exists()


def test_generation_cap_is_fitted_to_the_longest_training_answer(tmp_path: Path) -> None:
    from stillroom.evaluation import answer_budget
    from stillroom.models import load_tokenizer, resolve_base_model

    tokenizer = load_tokenizer(resolve_base_model("tiny", tmp_path))
    short, long = call("f", a=1), call("weather", city="Paris", unit="celsius", days=3)
    longest = len(tokenizer(long, add_special_tokens=False)["input_ids"])
    cfg = EvalConfig(max_new_tokens=160, answer_headroom=1.5)
    assert answer_budget(tokenizer, [short, long], cfg) == int(longest * 1.5 + 0.999) + 1
    assert answer_budget(tokenizer, [long * 20], cfg) == 160  # never above the configured cap
    assert answer_budget(tokenizer, [], cfg) == 160
