from itertools import combinations

import pytest

from stillroom.dedup import DedupConfig, Deduplicator, normalized_text, shingles

LONG_REQUEST = (
    "Please book a table for four people at an Italian restaurant in downtown Chicago this "
    "Friday evening around seven, preferably somewhere quiet with vegetarian options, outdoor "
    "seating if the weather allows it, and a short walk from the Blue Line station."
)


def request(content: str, tools: tuple[str, ...] = ("book_table",), system: str = "") -> str:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": content})
    return normalized_text(messages, tools)


def test_normalized_text_ignores_case_unicode_form_whitespace_and_system_prompt() -> None:
    a = request("Book  a table\nfor ＦＯＵＲ", system="You are a booking assistant.")
    b = request("book a table for four", system="Another system prompt entirely.")
    assert a == b
    assert "booking assistant" not in a


def test_normalized_text_joins_content_parts_and_sorts_tool_names() -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image"}]}]
    assert normalized_text(parts, ["zeta", "Alpha"]) == normalized_text(
        [{"role": "user", "content": "hi"}], ["alpha", "zeta"]
    )
    assert normalized_text(parts, ["alpha"]) != normalized_text(parts, ["zeta"])


def test_exact_duplicate_after_whitespace_and_case_changes() -> None:
    dedup = Deduplicator(DedupConfig(near=False))
    assert dedup.check("a", request(LONG_REQUEST)) is None
    assert dedup.last_match is None
    assert dedup.check("b", request("  " + LONG_REQUEST.upper().replace(" ", "\n  "))) == (
        "duplicate"
    )
    assert dedup.last_match == "a"
    assert dedup.counts == {"duplicate": 1, "near_duplicate": 0}


def test_near_duplicate_one_word_changed_is_caught_at_0_8() -> None:
    dedup = Deduplicator(DedupConfig(threshold=0.8))
    assert dedup.check("a", request(LONG_REQUEST)) is None
    assert dedup.check("b", request(LONG_REQUEST.replace("quiet", "calm"))) == "near_duplicate"
    assert dedup.last_match == "a"


def test_clearly_different_requests_are_kept() -> None:
    dedup = Deduplicator(DedupConfig(threshold=0.8))
    texts = [
        LONG_REQUEST,
        "What is the weather forecast for Paris over the next three days?",
        "Convert 250 US dollars to euros at today's exchange rate.",
        "Find me the shortest route from Boston to New York avoiding toll roads.",
    ]
    assert [dedup.check(str(i), request(t)) for i, t in enumerate(texts)] == [None] * 4
    assert dedup.counts == {"duplicate": 0, "near_duplicate": 0}


def test_same_text_with_different_tools_is_not_an_exact_duplicate() -> None:
    dedup = Deduplicator(DedupConfig(near=False))
    assert dedup.check("a", request(LONG_REQUEST, ("book_table",))) is None
    assert dedup.check("b", request(LONG_REQUEST, ("book_table", "get_weather"))) is None


def test_a_changed_number_is_a_different_request() -> None:
    base = "Find the compound interest on $10000 at 5% compounded monthly over 5 years, please."
    other = base.replace("$10000", "$20000")
    for same_numbers, expected in [(True, None), (False, "near_duplicate")]:
        dedup = Deduplicator(DedupConfig(threshold=0.8, same_numbers=same_numbers))
        dedup.check("a", request(base))
        assert dedup.check("b", request(other)) == expected


def test_last_match_names_the_kept_request_that_was_matched() -> None:
    other = (
        "Could you compare the battery life, weight and screen quality of the three most popular "
        "ultralight laptops released this year, and tell me which one suits a frequent traveller?"
    )
    dedup = Deduplicator(DedupConfig(threshold=0.8))
    assert dedup.check("restaurant", request(LONG_REQUEST)) is None
    assert dedup.check("laptops", request(other)) is None
    assert dedup.check("x", request(other.replace("popular", "loved"))) == "near_duplicate"
    assert dedup.last_match == "laptops"
    assert dedup.check("y", request(LONG_REQUEST.replace("quiet", "calm"))) == "near_duplicate"
    assert dedup.last_match == "restaurant"
    assert dedup.check("z", request("Something else entirely, about trains.")) is None
    assert dedup.last_match is None
    assert dedup.counts == {"duplicate": 0, "near_duplicate": 2}


def test_lsh_candidates_below_the_threshold_are_not_dropped() -> None:
    # A small index buckets loosely, so LSH proposes many pairs below the threshold; only the
    # confirmed ones (estimated Jaccard >= threshold) may count as near duplicates.
    fruits = [
        "apple",
        "banana",
        "cherry",
        "grape",
        "lemon",
        "mango",
        "olive",
        "peach",
        "pear",
        "plum",
    ]
    texts = {f"{a}+{b}": f"please order {a} and {b} for me" for a, b in combinations(fruits, 2)}
    cfg = DedupConfig(threshold=0.7, num_perm=16)
    dedup = Deduplicator(cfg)
    matched = []
    for key, text in texts.items():
        if dedup.check(key, text):
            matched.append((text, texts[dedup.last_match]))
    scores = [dedup.minhash_of(a).jaccard(dedup.minhash_of(b)) for a, b in matched]
    assert len(matched) < 5 and all(score >= cfg.threshold for score in scores)


def test_decisions_are_deterministic_for_a_seed() -> None:
    variants = [LONG_REQUEST.replace("seven", word) for word in ("six", "eight", "nine", "ten")]
    variants += [LONG_REQUEST.replace("Chicago", city) for city in ("Boston", "Denver")]

    def decisions(seed: int) -> list[tuple[str | None, str | None]]:
        dedup = Deduplicator(DedupConfig(threshold=0.85, seed=seed))
        out = []
        for i, text in enumerate(variants):
            out.append((dedup.check(str(i), request(text)), dedup.last_match))
        return out

    assert decisions(7) == decisions(7)
    assert decisions(7)[0] == (None, None)
    assert any(reason == "near_duplicate" for reason, _ in decisions(7))


def test_short_texts_work() -> None:
    assert shingles("hi", 5) == {"hi"}
    dedup = Deduplicator(DedupConfig(shingle_size=50))
    assert dedup.check("a", "hi") is None
    assert dedup.check("b", "hi") == "duplicate"
    assert dedup.check("c", "ho") is None
    assert dedup.check("d", "") is None
    assert dedup.counts == {"duplicate": 1, "near_duplicate": 0}


def test_disabled_checks_keep_everything() -> None:
    dedup = Deduplicator(DedupConfig(exact=False, near=False))
    assert dedup.check("a", "same") is None
    assert dedup.check("b", "same") is None


def test_reusing_a_kept_key_for_a_new_text_is_an_error() -> None:
    dedup = Deduplicator(DedupConfig())
    dedup.check("a", request(LONG_REQUEST))
    with pytest.raises(ValueError, match="'a'"):
        dedup.check("a", request("Something else entirely, about trains."))


@pytest.mark.parametrize(
    "bad", [{"threshold": 0.0}, {"threshold": 1.5}, {"num_perm": 1}, {"shingle_size": 0}]
)
def test_config_is_validated(bad: dict) -> None:
    with pytest.raises(ValueError):
        DedupConfig(**bad)
