import pytest

from stillroom.config import SplitConfig
from stillroom.splits import build_splits, dataset_hash, split_sizes


def record(i: int, sha: str | None = None) -> dict:
    return {
        "id": f"doc{i}",
        "sha256": sha or f"h{i}",
        "messages": [{"role": "user", "content": f"q{i}"}],
        "tools": [],
        "output": {"tool_calls": [{"name": "f", "arguments": {"x": i}}]},
    }


def test_split_sizes_and_no_document_in_two_splits() -> None:
    records = [record(i) for i in range(100)]
    # Two byte-identical requests under different ids must land in the same split.
    records += [record(200, sha="h5"), record(201, sha="h6")]
    dataset = build_splits(records, SplitConfig(validation_fraction=0.1, test_fraction=0.2, seed=1))
    sizes = split_sizes(dataset)
    assert sum(sizes.values()) == 102
    assert sizes["test"] in (20, 21, 22) and sizes["validation"] in (10, 11, 12)
    where = {row["sha256"]: name for name in dataset for row in dataset[name]}
    seen: dict[str, str] = {}
    for name in dataset:
        for row in dataset[name]:
            assert seen.setdefault(row["sha256"], name) == name
    assert where["h5"] == seen["h5"]


def test_split_is_seeded_and_hash_tracks_content() -> None:
    records = [record(i) for i in range(50)]
    a = build_splits(records, SplitConfig(seed=3))
    b = build_splits(list(reversed(records)), SplitConfig(seed=3))
    c = build_splits(records, SplitConfig(seed=4))
    assert dataset_hash(a) == dataset_hash(b)  # input order does not matter
    assert dataset_hash(a) != dataset_hash(c)  # a different split is a different dataset


def test_answers_are_compact_json() -> None:
    dataset = build_splits([record(i) for i in range(20)], SplitConfig(seed=1))
    assert dataset["train"][0]["answer"].startswith('[{"name":"f","arguments":{"x":')


def test_too_few_documents_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="too few"):
        build_splits([record(0), record(1)], SplitConfig())
