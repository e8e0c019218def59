"""The run summary people read at the end of a run: every stage's line, numbers as measured."""

from stillroom.report import format_markdown, format_summary

SUMMARY = {
    "run_id": "r1",
    "sampling": {
        "listed": 1004,
        "examined": 220,
        "sampled": 218,
        "rejected": 2,
        "rejected_by_reason": {"not_json": 1, "too_long": 1},
        "over_quota": 0,
    },
    "labelling": {
        "labelled": 217,
        "quarantined": 1,
        "quarantined_by_reason": {"schema_invalid": 1},
        "skipped": 0,
        "skipped_by_reason": {},
        "teacher_calls": 230,
        "cache_hits": 0,
        "repaired": 12,
        "retries": 7,
        "retries_by_error": {"RateLimitError": 7},
        "pii_scrubbed": {"email": 2},
        "cost_usd": 0.31,
        "saved_by_cache_usd": 0.0,
        "cost_per_1k_documents_usd": 1.42,
    },
    "dataset": {"sizes": {"train": 152, "validation": 22, "test": 43}},
    "training": {"mode": "LoRA (fp32 base)", "steps": 39, "train_tokens_per_second": 78.0},
    "student": {
        "accuracy": 0.1,
        "validity_rate": 0.5,
        "ms_per_example": 3000.0,
        "latency_p50_ms": 2500.0,
        "latency_p95_ms": 4000.0,
        "cost_per_1k_usd": 0.0833,
    },
    "base": {"accuracy": 0.0, "validity_rate": 0.0},
    "champion": None,
    "comparison": [{"model": "teacher", "cost_per_1k_usd": 1.42}],
    "cost_ratio": 17.0,
    "registration": {
        "name": "m",
        "version": "1",
        "aliases": ["challenger"],
        "decision": "kept as challenger",
    },
}


def test_summary_has_a_line_for_every_stage_with_its_reasons() -> None:
    text = format_summary(SUMMARY)
    for expected in [
        "1004 (220 read)",
        "2 (not_json 1, too_long 1)",
        "217 (230 paid calls, 0 from cache, 12 repaired)",
        "RateLimitError 7",
        "email 2",
        "$0.3100 paid this run",
        "no champion yet",
        "p50 2500 ms, p95 4000 ms",
        "student $0.0833 vs teacher $1.4200 (1/17)",
        "kept as challenger",
    ]:
        assert expected in text, expected


def test_champion_line_and_markdown_table() -> None:
    summary = SUMMARY | {"champion": {"version": "3", "accuracy": 0.2, "validity_rate": 0.9}}
    assert "champion v3 accuracy" in format_summary(summary)
    markdown = format_markdown(summary)
    assert markdown.startswith("| stage | result |") and "| champion v3 accuracy |" in markdown


def test_markdown_links_a_reviewer_to_mlflow() -> None:
    links = {
        "MLflow run": "http://mlflow:5000/#/experiments/1/runs/abc",
        "model version": "http://mlflow:5000/#/models/m/versions/4",
    }
    markdown = format_markdown(SUMMARY | {"links": links})
    assert "- MLflow run: [http://mlflow:5000/#/experiments/1/runs/abc](" in markdown
    assert "- model version: [http://mlflow:5000/#/models/m/versions/4](" in markdown
    # A local store has no UI: the ids are given as text, not as links that go nowhere.
    local = format_markdown(SUMMARY | {"links": {"MLflow run": "abc"}})
    assert "- MLflow run: abc" in local and "](" not in local
