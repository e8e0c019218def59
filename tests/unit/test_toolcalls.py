import json

import pytest

from stillroom.toolcalls import (
    calls_match,
    judge_prediction,
    name_match,
    normalize_value,
    parse_tool_call_blocks,
    parse_tool_call_blocks_text,
    parse_tool_calls_json,
    parse_tool_calls_text,
    render_tool_calls,
)

FACTORIAL = {"name": "math_factorial", "arguments": {"number": 5}}
AREA = {"name": "area", "arguments": {"base": 10, "unit": "cm"}}
COMPACT = '[{"name":"math_factorial","arguments":{"number":5}}]'


def test_render_is_compact_with_name_first():
    call = {"arguments": {"city": "Zürich", "days": [1, 2]}, "name": "weather"}
    assert render_tool_calls([call]) == (
        '[{"name":"weather","arguments":{"city":"Zürich","days":[1,2]}}]'
    )
    assert render_tool_calls([FACTORIAL]) == COMPACT


def test_render_then_parse_round_trips():
    calls = [FACTORIAL, AREA]
    assert parse_tool_calls_text(render_tool_calls(calls)) == calls
    assert parse_tool_calls_json(render_tool_calls(calls)) == calls


@pytest.mark.parametrize(
    "text",
    [
        COMPACT,
        f"  \n{COMPACT}\n ",
        f"Sure! Here is the call: {COMPACT} Hope this helps.",
        f"```json\n{COMPACT}\n```",
        f"```\n{COMPACT}\n```\nassistant",
        '{"name":"math_factorial","arguments":{"number":5}}',
        'Call: {"name": "math_factorial", "arguments": {"number": 5}}',
        f"[note] {COMPACT}",
        f"{COMPACT}{COMPACT}",
        '[{"arguments":{"number":5},"name":"math_factorial","id":"call_1"}]',
    ],
)
def test_parse_finds_the_answer_in_chatter(text):
    assert parse_tool_calls_text(text) == [FACTORIAL]


def test_parse_takes_the_first_list_when_the_model_repeats_itself():
    text = f"{COMPACT}\n{render_tool_calls([AREA])}"
    assert parse_tool_calls_text(text) == [FACTORIAL]


@pytest.mark.parametrize("arguments", ["", ',"arguments":null'])
def test_parse_reads_missing_or_null_arguments_as_no_arguments(arguments):
    assert parse_tool_calls_text(f'[{{"name":"get_time"{arguments}}}]') == [
        {"name": "get_time", "arguments": {}}
    ]


def test_parse_accepts_an_empty_list_as_a_valid_wrong_answer():
    assert parse_tool_calls_text("[]") == []


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I cannot help with that.",
        "math_factorial(number=5)",
        # Truncated generations: no prefix of a list may pass for a shorter answer.
        '[{"name":"math_factorial","arguments":{"number":5}}',
        '[{"name":"math_factorial","arguments":{"number":5}},{"name":"area","argu',
        '[{"name":"math_factorial","arguments":{"number":',
        '[{"name":"math_factorial"',
        # Malformed items.
        '[{"name":5,"arguments":{}}]',
        '[{"name":"","arguments":{}}]',
        '[{"arguments":{"number":5}}]',
        '[{"name":"math_factorial","arguments":"{\\"number\\":5}"}]',
        '[{"name":"math_factorial","arguments":[5]}]',
        '["math_factorial"]',
        '[[{"name":"math_factorial","arguments":{}}]]',
        # A call inside a broken list is not the answer on its own.
        '[{"name":"f","arguments":{}},{"name":7}]',
        # An object after a comma looks like the tail of a list, even in chatter.
        'Sure, {"name":"math_factorial","arguments":{"number":5}}',
        # The first JSON value decides, even when a call follows it.
        f'{{"thought":"use factorial"}} {COMPACT}',
        f"[1, 2] {COMPACT}",
    ],
)
def test_parse_rejects_text_without_a_well_formed_answer(text):
    assert parse_tool_calls_text(text) is None


def test_json_parse_is_strict_about_surrounding_text():
    assert parse_tool_calls_json(COMPACT) == [FACTORIAL]
    assert parse_tool_calls_json(f"Sure: {COMPACT}") is None
    assert parse_tool_calls_json('{"name":"math_factorial","arguments":{}}') is None


def test_normalize_numbers_compare_by_value_but_bools_stay_bools():
    assert normalize_value(5) == normalize_value(5.0)
    assert normalize_value(5.5) == 5.5
    assert normalize_value(5.0) != normalize_value(5.5)
    assert normalize_value(True) is True
    assert normalize_value(None) is None
    # Python's True == 1, so only the serialised key can tell them apart.
    assert json.dumps(normalize_value(True)) != json.dumps(normalize_value(1))


def test_normalize_strings_lists_and_dicts():
    assert normalize_value("  New York ") == "new york"
    assert normalize_value("STRASSE") == normalize_value("straße")
    assert normalize_value(["B", 2.0, [" c "]]) == ["b", 2, ["c"]]
    assert normalize_value(["a", "b"]) != normalize_value(["b", "a"])
    assert normalize_value({"City": " Paris", "n": {"k": 1.0}}) == {"City": "paris", "n": {"k": 1}}


def call(name, **arguments):
    return {"name": name, "arguments": arguments}


def test_calls_match_normalises_argument_values():
    assert calls_match([call("f", x=5.0, city=" PARIS")], [call("f", x=5, city="Paris")])
    assert not calls_match([call("f", flag=1)], [call("f", flag=True)])
    assert not calls_match([call("f", flag=0)], [call("f", flag=False)])
    assert not calls_match([call("f", x="5")], [call("f", x=5)])
    assert not calls_match([call("f", x=5)], [call("f", x=6)])
    assert not calls_match([call("f", x=5)], [call("f", x=5, y=1)])
    assert not calls_match([call("f", x=5)], [call("g", x=5)])
    assert not calls_match([call("f", values=[1, 2])], [call("f", values=[2, 1])])


def test_calls_match_ignores_parallel_order_but_counts_duplicates():
    first, second = call("weather", city="Paris"), call("weather", city="Rome")
    assert calls_match([second, first], [first, second])
    assert not calls_match([first, first], [first, second])
    assert not calls_match([first], [first, first])
    assert not calls_match([first, first, second], [first, second])
    assert not calls_match([], [first])


def test_name_match_compares_the_multiset_of_names():
    assert name_match([call("g", a=1), call("f", b=2)], [call("f", b=3), call("g")])
    assert not name_match([call("f"), call("f")], [call("f"), call("g")])
    assert not name_match([call("f")], [call("f"), call("f")])
    assert not name_match([call("F")], [call("f")])


def test_judge_prediction():
    assert judge_prediction(f"ok {COMPACT}", COMPACT) == {
        "valid": True,
        "name_match": True,
        "exact_match": True,
    }
    wrong_number = '[{"name":"math_factorial","arguments":{"number":6}}]'
    assert judge_prediction(wrong_number, COMPACT) == {
        "valid": True,
        "name_match": True,
        "exact_match": False,
    }
    assert judge_prediction(COMPACT[:-1], COMPACT) == {
        "valid": False,
        "name_match": False,
        "exact_match": False,
    }
    with pytest.raises(ValueError, match="reference"):
        judge_prediction(COMPACT, f"chatter {COMPACT}")


# --- `<tool_call>` blocks (tools-template families) -----------------------------------------


def block(call: dict | str) -> str:
    body = call if isinstance(call, str) else json.dumps(call)
    return f"<tool_call>\n{body}\n</tool_call>"


def test_blocks_give_their_calls_in_order():
    assert parse_tool_call_blocks_text(block(FACTORIAL)) == [FACTORIAL]
    text = block(FACTORIAL) + "\n" + block(AREA)
    assert parse_tool_call_blocks_text(text) == [FACTORIAL, AREA]


def test_blocks_win_over_chatter_around_them():
    text = "Let me call it.\n" + block(FACTORIAL) + "\nDone: [1, 2]"
    assert parse_tool_call_blocks_text(text) == [FACTORIAL]


def test_without_blocks_no_call_is_an_empty_list_and_prose_is_invalid():
    assert parse_tool_call_blocks_text("[]") == []
    assert parse_tool_call_blocks_text("  []\n") == []
    assert parse_tool_call_blocks_text("") is None
    assert parse_tool_call_blocks_text("I cannot help with that.") is None


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>\n{"name": "math_factorial", "arguments": {"number": 5',  # cut by the budget
        block('{"name": "math_factorial", "arguments": {"number": 5,}}'),  # bad JSON
        block('{"name": "math_factorial", "arguments": "{\\"number\\": 5}"}'),  # a string
        block("math_factorial(number=5)"),  # no JSON at all
        block('{"arguments": {"number": 5}}'),  # no name
        block(FACTORIAL) + '\n<tool_call>\n{"name": "area", "argu',  # second one cut
        block(FACTORIAL) + "\n" + block("[]"),  # a list is not a call
    ],
)
def test_any_bad_block_makes_the_whole_answer_invalid(text):
    assert parse_tool_call_blocks_text(text) is None


def test_the_teachers_lenient_reading_keeps_what_the_strict_one_rejects():
    cut = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par'
    assert parse_tool_call_blocks(cut) == [{"name": "get_weather", "arguments": '{"city": "Par'}]
    assert parse_tool_call_blocks_text(cut) is None
