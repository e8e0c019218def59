import json

from stillroom.sampling import Candidate, reject_reason, reservoir_sample
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


def candidates(n: int) -> list[Candidate]:
    return [Candidate(key=f"k{i:04d}", id=str(i), sha256=str(i)) for i in range(n)]


def test_reservoir_is_seeded_and_sized() -> None:
    first = reservoir_sample(candidates(1000), 50, seed=1)
    assert len(first) == 50 and len(set(first)) == 50
    assert first == reservoir_sample(candidates(1000), 50, seed=1)
    assert first != reservoir_sample(candidates(1000), 50, seed=2)


def test_reservoir_takes_everything_when_short() -> None:
    assert len(reservoir_sample(candidates(7), 50, seed=1)) == 7


def test_reservoir_is_roughly_uniform() -> None:
    # Each of 100 items should be drawn ~ 10/100 of the time over many seeds; a biased
    # reservoir (e.g. one favouring early items) puts the first half far above the second.
    hits = [0] * 100
    for seed in range(400):
        for c in reservoir_sample(candidates(100), 10, seed=seed):
            hits[int(c.id)] += 1
    first_half, second_half = sum(hits[:50]), sum(hits[50:])
    assert abs(first_half - second_half) < 0.15 * (first_half + second_half)
