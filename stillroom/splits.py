"""Labelled records -> `datasets.DatasetDict` (train / validation / test), content-hashed.

Splitting is by document content hash, so two byte-identical requests can never sit on
both sides of the held-out line. The dataset stays model-agnostic: requests and answers are
JSON strings (tool schemas differ per row, which Arrow's fixed column types cannot hold);
each model's own rendering happens in training and evaluation via `prompts.py`.
"""

from __future__ import annotations

import json
import random
from typing import Any

from datasets import Dataset, DatasetDict

from stillroom.config import SplitConfig
from stillroom.storage import content_hash
from stillroom.toolcalls import render_tool_calls

SPLITS = ("train", "validation", "test")


def to_row(record: dict[str, Any]) -> dict[str, str]:
    return {
        "id": record["id"],
        "sha256": record["sha256"],
        "messages": json.dumps(record["messages"], ensure_ascii=False),
        "tools": json.dumps(record["tools"], ensure_ascii=False),
        "answer": render_tool_calls(record["output"]["tool_calls"]),
        # The teacher's reasoning, when the target asks for it (distilling step-by-step).
        "rationale": record.get("rationale") or "",
    }


def assign_splits(hashes: list[str], cfg: SplitConfig) -> dict[str, str]:
    """Map each distinct content hash to a split: a seeded shuffle, then contiguous slices."""
    unique = sorted(set(hashes))
    random.Random(cfg.seed).shuffle(unique)
    n_test = max(1, round(len(unique) * cfg.test_fraction))
    n_val = max(1, round(len(unique) * cfg.validation_fraction))
    if n_test + n_val >= len(unique):
        raise ValueError(f"{len(unique)} distinct documents are too few to split")
    names = ["test"] * n_test + ["validation"] * n_val
    names += ["train"] * (len(unique) - len(names))
    return dict(zip(unique, names, strict=True))


def build_splits(records: list[dict[str, Any]], cfg: SplitConfig) -> DatasetDict:
    assignment = assign_splits([r["sha256"] for r in records], cfg)
    rows: dict[str, list[dict[str, str]]] = {name: [] for name in SPLITS}
    for record in sorted(records, key=lambda r: r["id"]):
        rows[assignment[record["sha256"]]].append(to_row(record))
    return DatasetDict({name: Dataset.from_list(rows[name]) for name in SPLITS})


def dataset_hash(dataset: DatasetDict) -> str:
    """Content hash of the whole split set: same rows in the same splits, same hash."""
    return content_hash({name: dataset[name].to_list() for name in SPLITS})


def split_sizes(dataset: DatasetDict) -> dict[str, int]:
    return {name: dataset[name].num_rows for name in SPLITS}
