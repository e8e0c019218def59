from stillroom.seeding import (
    convert_schema,
    load_bfcl_category,
    recorded_tool_calls,
    replay_key,
    to_document,
    tool_name,
)


def test_bfcl_schema_dialect_becomes_json_schema() -> None:
    node = {
        "type": "dict",
        "properties": {
            "x": {"type": "float"},
            "pair": {"type": "tuple", "items": {"type": "integer"}},
            "anything": {"type": "any"},
            # A property *named* type must not be mistaken for the schema keyword.
            "type": {"type": "string"},
        },
    }
    out = convert_schema(node)
    assert out["type"] == "object"
    assert out["properties"]["x"]["type"] == "number"
    assert out["properties"]["pair"] == {"type": "array", "items": {"type": "integer"}}
    assert "type" not in out["properties"]["anything"]
    assert out["properties"]["type"] == {"type": "string"}


def test_tool_names_fit_the_openai_pattern() -> None:
    assert tool_name("math.factorial") == "math_factorial"


def test_ground_truth_takes_first_accepted_value_and_omits_optional() -> None:
    truth = [
        {"math.hypot": {"x": [4], "y": [5], "z": ["", 0]}},
        {"db.get": {"conditions": [{"dept": ["Science", "sci"]}], "unit": ["units", ""]}},
    ]
    assert recorded_tool_calls(truth) == [
        {"name": "math_hypot", "arguments": {"x": 4, "y": 5}},
        {"name": "db_get", "arguments": {"conditions": {"dept": "Science"}, "unit": "units"}},
    ]


def test_packaged_bfcl_cases_become_documents() -> None:
    cases = load_bfcl_category("parallel_multiple", limit=3)
    document = to_document(cases[0], "parallel_multiple", "2026-11-30")
    assert document["messages"][0]["role"] == "user"
    assert all(t["function"]["parameters"]["type"] == "object" for t in document["tools"])
    # The replay key ignores system prompts: changing the teacher prompt keeps replaying.
    with_system = [{"role": "system", "content": "x"}, *document["messages"]]
    assert replay_key(with_system, document["tools"]) == replay_key(
        document["messages"], document["tools"]
    )
