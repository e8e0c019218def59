import json
import random

from stillroom.config import SamplingConfig
from stillroom.sampling import Pool, dotted_get, fill_pool, key_stratum, priority, reject_reason
from stillroom.targets import load_target

TARGET = load_target("configs/targets/bfcl_tool_call.yaml")
GOOD = {
    "id": "a",
    "messages": [{"role": "user", "content": "hi"}],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
}


def test_reject_reasons() -> None:
    assert reject_reason(b"", TARGET)[0] == "empty"
    assert reject_reason(b"  \n", TARGET)[0] == "empty"
    assert reject_reason(b"\xff\xfe{}", TARGET)[0] == "not_utf8"
    assert reject_reason(b'{"messages": [', TARGET)[0] == "not_json"
    assert reject_reason(b"[1, 2]", TARGET)[0] == "not_an_object"
    assert (
        reject_reason(json.dumps({"tools": GOOD["tools"]}).encode(), TARGET)[0]
        == "missing_messages"
    )
    bad_messages = dict(GOOD, messages=[{"content": "no role"}])
    assert reject_reason(json.dumps(bad_messages).encode(), TARGET)[0] == "malformed_messages"
    assert reject_reason(json.dumps(dict(GOOD, tools=[])).encode(), TARGET)[0] == "missing_tools"
    reason, document = reject_reason(json.dumps(GOOD).encode(), TARGET)
    assert reason is None and document == GOOD


def keys(n: int) -> list[str]:
    return [f"requests/2026-11-{1 + i % 3:02d}/doc-{i:05d}.json" for i in range(n)]


def drawn(cfg: SamplingConfig, listing: list[str]) -> list[str]:
    pool, _, _ = fill_pool(listing, cfg, oversample=1.0)
    return [key for key, _ in pool.ordered()]


def test_draw_is_seeded_and_independent_of_listing_order() -> None:
    cfg = SamplingConfig(size=50, seed=1, read_workers=0)
    listing = keys(1000)
    first = drawn(cfg, listing)
    assert len(first) == 50 and len(set(first)) == 50
    shuffled = listing[:]
    random.Random(3).shuffle(shuffled)
    assert drawn(cfg, shuffled) == first  # pagination or order cannot change the sample
    assert drawn(SamplingConfig(size=50, seed=2, read_workers=0), listing) != first


def test_new_keys_leave_earlier_picks_in_place_unless_they_outrank_them() -> None:
    cfg = SamplingConfig(size=50, seed=1, read_workers=0)
    before = set(drawn(cfg, keys(1000)))
    after = set(drawn(cfg, keys(1100)))
    # 100 new keys can displace at most the picks they outrank: ~50 * 100/1100 ~ 5.
    assert len(before - after) <= 15


def test_draw_is_roughly_uniform() -> None:
    # Over many seeds each key should be drawn about equally; a biased draw (e.g. one
    # favouring early keys) puts the first half far above the second.
    listing = keys(100)
    hits = {k: 0 for k in listing}
    for seed in range(400):
        for key in drawn(SamplingConfig(size=10, seed=seed, read_workers=0), listing):
            hits[key] += 1
    counts = list(hits.values())
    first_half, second_half = sum(counts[:50]), sum(counts[50:])
    assert abs(first_half - second_half) < 0.15 * (first_half + second_half)


def test_pool_memory_is_bounded_by_its_capacity() -> None:
    pool = Pool(lambda stratum: 7)
    for i in range(10_000):
        pool.offer("", priority(0, str(i)), str(i))
    assert len(pool.ordered()) == 7 and pool.overflowed == {""}
    best = sorted(range(10_000), key=lambda i: priority(0, str(i)))[:7]
    assert [k for k, _ in pool.ordered()] == [str(i) for i in best]


def test_key_strata_each_get_their_own_pool_and_quota() -> None:
    stratify = {"by": "key", "pattern": r"requests/([^/]+)/", "quotas": {"2026-11-01": 2}}
    cfg = SamplingConfig(size=5, seed=1, read_workers=0, stratify=stratify)
    pool, listed, by_stratum = fill_pool(keys(90), cfg, oversample=1.0)
    assert listed == 90 and by_stratum == {"2026-11-01": 30, "2026-11-02": 30, "2026-11-03": 30}
    per_stratum = {s: len(h) for s, h in pool.heaps.items()}
    assert per_stratum == {"2026-11-01": 2, "2026-11-02": 5, "2026-11-03": 5}
    assert key_stratum(cfg.stratify)("elsewhere/x.json") == "<other>"


def test_dotted_get_reaches_into_lists() -> None:
    assert dotted_get(GOOD, "tools.0.function.name") == "f"
    assert dotted_get(GOOD, "tools.3.function.name") is None
    assert dotted_get(GOOD, "id") == "a"
