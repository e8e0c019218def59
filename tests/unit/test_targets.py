from stillroom.targets import load_target, validate_answer

TARGET = load_target("configs/targets/bfcl_tool_call.yaml")
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "area",
            "parameters": {
                "type": "object",
                "properties": {"base": {"type": "integer"}, "unit": {"type": "string"}},
                "required": ["base"],
            },
        },
    }
]


def answer(*calls: dict) -> dict:
    return {"tool_calls": list(calls)}


def test_valid_answer_passes() -> None:
    assert (
        validate_answer(TARGET, TOOLS, answer({"name": "area", "arguments": {"base": 3}})) is None
    )


def test_answer_shape_is_checked() -> None:
    assert "tool_calls" in validate_answer(TARGET, TOOLS, {"calls": []})
    assert validate_answer(TARGET, TOOLS, answer()) is not None  # minItems 1


def test_unknown_tool_is_rejected() -> None:
    problem = validate_answer(TARGET, TOOLS, answer({"name": "volume", "arguments": {}}))
    assert "unknown tool 'volume'" in problem


def test_arguments_checked_against_the_tools_own_schema() -> None:
    missing = validate_answer(TARGET, TOOLS, answer({"name": "area", "arguments": {}}))
    assert "base" in missing
    wrong_type = validate_answer(
        TARGET, TOOLS, answer({"name": "area", "arguments": {"base": "3"}})
    )
    assert "base" in wrong_type and "integer" in wrong_type
