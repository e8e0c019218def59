"""The local teacher in-process: replay, each fault knob, and the provider-side books."""

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from stillroom.seeding import replay_key
from stillroom.teacher_server import Faults, ReplayBackend, create_app, parse_faults

MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
CALLS = [{"name": "get_weather", "arguments": {"city": "Paris"}}]


@pytest.fixture
def replay(tmp_path: Path) -> Path:
    path = tmp_path / "replay.jsonl"
    record = {"key": replay_key(MESSAGES, TOOLS), "id": "w1", "tool_calls": CALLS}
    path.write_text(json.dumps(record) + "\n")
    return path


def client_for(replay: Path, **faults: float) -> TestClient:
    return TestClient(create_app(ReplayBackend(replay), faults=Faults(**faults)))


def ask(client: TestClient, messages=MESSAGES, **extra):
    body = {"model": "replay-teacher", "messages": messages, "tools": TOOLS, **extra}
    return client.post("/v1/chat/completions", json=body)


def test_replay_answers_with_tool_calls_and_bills_once(replay: Path) -> None:
    client = client_for(replay)
    reply = ask(client).json()
    call = reply["choices"][0]["message"]["tool_calls"][0]["function"]
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}
    ask(client)  # the very same request again: a client without a cache pays twice
    stats = client.get("/stats").json()
    assert stats["delivered"] == 2 and stats["repeats"] == 1
    assert stats["billed_prompt_tokens"] == 2 * reply["usage"]["prompt_tokens"]


def test_system_prompt_and_repair_turns_do_not_change_the_replayed_answer(replay) -> None:
    client = client_for(replay)
    repair = [
        {"role": "system", "content": "be precise"},
        *MESSAGES,
        {"role": "assistant", "content": "[bad]"},
        {"role": "user", "content": "That answer was invalid. Answer again."},
    ]
    assert ask(client, messages=repair).status_code == 200
    other = [{"role": "user", "content": "Something never recorded"}]
    assert ask(client, messages=other).status_code == 404


def test_rate_limit_answers_429_with_retry_after(replay: Path) -> None:
    client = client_for(replay, rate_limit_rps=2)
    codes = [ask(client, temperature=i).status_code for i in range(6)]
    assert codes[:2] == [200, 200] and 429 in codes
    limited = ask(client, temperature=9)
    assert limited.status_code == 429
    assert float(limited.headers["retry-after-ms"]) > 0 and int(limited.headers["retry-after"]) >= 1


@pytest.mark.parametrize(
    ("fault", "check"),
    [
        ("p_429", lambda r: r.status_code == 429 and r.headers["retry-after"] == "1"),
        ("p_5xx", lambda r: r.status_code in (500, 502, 503)),
        (
            "p_malformed",
            lambda r: _arguments(r).endswith('"Paris"') and not _parses(_arguments(r)),
        ),
        (
            "p_schema_invalid",
            lambda r: (
                r.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"]
                == "not_an_offered_tool"
            ),
        ),
    ],
)
def test_each_fault_does_what_it_says(replay: Path, fault: str, check) -> None:
    assert check(ask(client_for(replay, **{fault: 1.0})))


def test_hung_request_is_slow_but_answers_a_patient_client(replay: Path) -> None:
    client = client_for(replay, p_timeout=1.0, hang_s=0.2)
    assert ask(client).status_code == 200
    assert client.get("/stats").json()["timeout"] == 1


def test_fault_draws_depend_on_request_and_attempt_not_arrival_order(replay: Path) -> None:
    def outcomes(order: list[float]) -> dict[float, list[int]]:
        client = client_for(replay, p_5xx=0.5, seed=3)
        seen: dict[float, list[int]] = {t: [] for t in order}
        for t in order * 3:
            seen[t].append(ask(client, temperature=t).status_code)
        return seen

    assert outcomes([0.1, 0.2, 0.3]) == outcomes([0.3, 0.1, 0.2])


def test_admin_api_changes_faults_and_resets_books(replay: Path) -> None:
    client = client_for(replay)
    ask(client)
    client.put("/admin/faults", json={"p_5xx": 1.0})
    assert ask(client).status_code >= 500
    client.post("/admin/reset")
    assert client.get("/stats").json() == {}


def test_fault_flags_parse_and_refuse_typos() -> None:
    assert parse_faults(["latency_ms=200", "p_429=0.1"]) == Faults(latency_ms=200, p_429=0.1)
    with pytest.raises(ValueError):
        parse_faults(["p_4299=0.1"])


def _arguments(response) -> str:
    return response.json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True
