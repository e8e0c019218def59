import pytest

from stillroom.pii import (
    PII_KINDS,
    apply_replacements,
    passes_iban_checksum,
    passes_luhn,
    scrub_messages,
    scrub_text,
    validate_kinds,
)

ALL = list(PII_KINDS)


def user(content: object) -> dict:
    return {"role": "user", "content": content}


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        (
            "write to jane.doe+tag@mail.example.co.uk today",
            "email",
            "jane.doe+tag@mail.example.co.uk",
        ),
        ("call +44 20 7946 0958 now", "phone", "+44 20 7946 0958"),
        ("call +1 (555) 123-4567 now", "phone", "+1 (555) 123-4567"),
        ("call +44 (0)20 7946 0958 now", "phone", "+44 (0)20 7946 0958"),
        ("call +14155552671 now", "phone", "+14155552671"),
        ("call (555) 123-4567 now", "phone", "(555) 123-4567"),
        ("call 555-123-4567 now", "phone", "555-123-4567"),
        ("call 555.123.4567 now", "phone", "555.123.4567"),
        ("call 1-800-555-0199 now", "phone", "1-800-555-0199"),
        ("pay with 4111 1111 1111 1111 now", "card", "4111 1111 1111 1111"),
        ("pay with 4111-1111-1111-1111 now", "card", "4111-1111-1111-1111"),
        ("pay with 4111111111111111 now", "card", "4111111111111111"),
        ("pay with 3782 822463 10005 now", "card", "3782 822463 10005"),
        ("send to GB82 WEST 1234 5698 7654 32 now", "iban", "GB82 WEST 1234 5698 7654 32"),
        ("send to GB82WEST12345698765432 now", "iban", "GB82WEST12345698765432"),
        ("host 192.168.1.1, port 22", "ip", "192.168.1.1"),
        ("host 2001:db8::8a2e:370:7334 is down", "ip", "2001:db8::8a2e:370:7334"),
        ("host ::ffff:192.0.2.1 is down", "ip", "::ffff:192.0.2.1"),
        ("ssn 123-45-6789 on file", "national_id", "123-45-6789"),
        ("NI number AB 12 34 56 C on file", "national_id", "AB 12 34 56 C"),
        ("NI number AB123456C on file", "national_id", "AB123456C"),
    ],
)
def test_each_kind_is_detected_and_replaced(text: str, kind: str, value: str) -> None:
    result = scrub_messages([user(text)], ALL)
    placeholder = f"<{kind.upper()}_1>"
    assert result.messages[0]["content"] == text.replace(value, placeholder)
    assert result.counts == {kind: 1}
    assert result.replacements == {value: placeholder}


@pytest.mark.parametrize(
    "text",
    [
        "pay with 4111 1111 1111 1112",  # Luhn fails
        "pay with 4111111111111112",
        "order 1700000000000 shipped",  # epoch milliseconds: not a card prefix
        "send to GB82 WEST 1234 5698 7654 33",  # mod-97 fails
        "send to GB82WEST12345698765433",
        "ssn 000-12-3456",  # area 000
        "ssn 666-12-3456",  # area 666
        "ssn 900-12-3456",  # area 9xx
        "ssn 123-00-4567",  # group 00
        "ssn 123-45-0000",  # serial 0000
        "NI number DA123456C",  # D is never a first NINO letter
        "NI number GB123456A",  # unallocated prefix
        "host 256.1.1.1",  # octet out of range
        "host 12:30:45",  # a time, not IPv6
    ],
)
def test_invalid_values_are_left_alone(text: str) -> None:
    result = scrub_messages([user(text)], ALL)
    assert result.messages[0]["content"] == text
    assert result.counts == {}


@pytest.mark.parametrize(
    "text",
    [
        "In 2023 we sold 10000 units at 3.14159 each.",
        "Book it for 2023-05-01 at 12:30:45, or 01-01-1980.",
        "Coordinates 40.7128, -74.0060 and (34.0522, -118.2437).",
        "Signed coordinates +48.85837, +2.29448 and +40.712776, -74.005974.",
        "Between 2019-2020 the total was 1,000,000 ($10,000.00), range 100-1000.",
        "The account id is 1234567890 and the count is 299792458.",
        "Revenue grew by +1000000 and 10.000.000 EUR; see item (1) 2000.",
        "Upgrade from 1.2.3.4.5 to v1.2.3.4 or 10.0.19041.1.",
        "ISBN 978-3-16-148410-0, ZIP 12345-6789, slice arr[::2].",
        "Evaluate y=3x+2 and '2x^2+3x-1' between -1 and 2.",
    ],
)
def test_ordinary_numbers_are_not_touched(text: str) -> None:
    result = scrub_messages([user(text)], ALL)
    assert result.messages[0]["content"] == text
    assert result.counts == {}


def test_dotted_quad_is_an_address_but_a_longer_version_string_is_not() -> None:
    # A 4-part dotted quad with octets <= 255 cannot be told apart from an address, so it is
    # scrubbed; five parts, or a `v` prefix, mark a version string.
    assert scrub_text("version 1.2.3.4 ships", ["ip"]) == "version <IP_1> ships"
    assert scrub_text("version 1.2.3.4.5 ships", ["ip"]) == "version 1.2.3.4.5 ships"


def test_iban_wins_over_the_card_number_inside_it() -> None:
    # The BBAN digits 4111 1111 1111 1111 are a Luhn-valid card number on their own.
    text = "pay to DE95 4111 1111 1111 1111 00 now"
    assert scrub_text(text, ALL) == "pay to <IBAN_1> now"
    assert scrub_text(text, ["card", "phone"]) == "pay to DE95 <CARD_1> 00 now"


def test_grouped_values_are_trimmed_back_to_the_valid_part() -> None:
    text = "BE68 5390 0754 7034 then DE89 3704 0044 0532 0130 00, card 4111 1111 1111 1111 2023"
    assert scrub_text(text, ALL) == "<IBAN_1> then <IBAN_2>, card <CARD_1> 2023"


def test_same_value_gets_the_same_placeholder_across_messages() -> None:
    messages = [
        {"role": "system", "content": "You are helpful."},
        user("Email a@x.com and b@x.com, then a@x.com again."),
        {"role": "assistant", "content": "Sent to A@X.com."},  # case does not make a new address
        user("Call +1 555-123-4567; also b@x.com."),
    ]
    result = scrub_messages(messages, ALL)
    contents = [m["content"] for m in result.messages]
    assert contents == [
        "You are helpful.",
        "Email <EMAIL_1> and <EMAIL_2>, then <EMAIL_1> again.",
        "Sent to <EMAIL_1>.",
        "Call <PHONE_1>; also <EMAIL_2>.",
    ]
    assert result.counts == {"email": 5, "phone": 1}


def test_placeholders_are_numbered_per_kind_in_order_of_appearance() -> None:
    text = "c@x.com, 10.0.0.2, a@x.com, 10.0.0.1, b@x.com, 10.0.0.2"
    assert scrub_text(text, ALL) == "<EMAIL_1>, <IP_1>, <EMAIL_2>, <IP_2>, <EMAIL_3>, <IP_1>"


def test_differently_formatted_card_shares_a_placeholder() -> None:
    text = "4111 1111 1111 1111 or 4111111111111111 or 5555555555554444"
    assert scrub_text(text, ["card"]) == "<CARD_1> or <CARD_1> or <CARD_2>"


def test_scrub_text_shares_state_across_calls() -> None:
    replacements: dict[str, str] = {}
    first = scrub_text("mail a@x.com", ["email"], replacements)
    second = scrub_text("mail b@x.com or a@x.com", ["email"], replacements)
    assert (first, second) == ("mail <EMAIL_1>", "mail <EMAIL_2> or <EMAIL_1>")
    assert replacements == {"a@x.com": "<EMAIL_1>", "b@x.com": "<EMAIL_2>"}


def test_content_parts_are_scrubbed_and_other_fields_untouched() -> None:
    messages = [
        {
            "role": "tool",
            "name": "lookup",
            "tool_call_id": "call_a@x.com",
            "content": [
                {"type": "text", "text": "owner a@x.com"},
                {"type": "image_url", "image_url": {"url": "https://x.com/a@x.com.png"}},
                {"type": "text", "text": "cc a@x.com"},
            ],
        }
    ]
    result = scrub_messages(messages, ALL)
    message = result.messages[0]
    assert [p.get("text") for p in message["content"]] == ["owner <EMAIL_1>", None, "cc <EMAIL_1>"]
    assert message["content"][1] == messages[0]["content"][1]
    assert (message["role"], message["name"], message["tool_call_id"]) == (
        "tool",
        "lookup",
        "call_a@x.com",
    )
    assert messages[0]["content"][0]["text"] == "owner a@x.com"  # the original is not mutated


def test_disabled_kinds_are_untouched() -> None:
    text = "mail a@x.com from 192.168.0.1"
    result = scrub_messages([user(text)], ["ip"])
    assert result.messages[0]["content"] == "mail a@x.com from <IP_1>"
    assert result.counts == {"ip": 1}


def test_no_kinds_means_no_scrubbing_but_still_a_copy() -> None:
    messages = [user("mail a@x.com")]
    result = scrub_messages(messages, [])
    assert result.messages == messages and result.messages[0] is not messages[0]
    assert (result.counts, result.replacements) == ({}, {})


def test_unknown_kind_raises_naming_it() -> None:
    with pytest.raises(ValueError, match="passport"):
        validate_kinds(["email", "passport"])
    with pytest.raises(ValueError, match="passport"):
        scrub_messages([user("x")], ["passport"])
    with pytest.raises(ValueError):
        validate_kinds("email")  # a bare string is a sequence of letters, not of kinds


def test_repr_shows_counts_but_never_the_originals() -> None:
    result = scrub_messages([user("mail secret.person@x.com or call +44 20 7946 0958")], ALL)
    text = repr(result)
    assert "secret.person" not in text and "7946" not in text
    assert "'email': 1" in text and "'phone': 1" in text


def test_apply_replacements_walks_json_and_prefers_longer_originals() -> None:
    # "a@x.co" is a prefix of "a@x.co.uk" ending at a dot, so only longest-first gets it right.
    replacements = {"a@x.co": "<EMAIL_1>", "a@x.co.uk": "<EMAIL_2>", "10.0.0.1": "<IP_1>"}
    answer = {
        "name": "send",
        "arguments": {
            "to": ["a@x.co", "a@x.co.uk"],
            "body": "from 10.0.0.1 not 10.0.0.12",
            "n": 3,
        },
    }
    assert apply_replacements(answer, replacements) == {
        "name": "send",
        "arguments": {
            "to": ["<EMAIL_1>", "<EMAIL_2>"],
            "body": "from <IP_1> not 10.0.0.12",
            "n": 3,
        },
    }
    assert answer["arguments"]["to"][0] == "a@x.co"  # the input is not mutated


def test_apply_replacements_matches_the_scrubbed_prompt() -> None:
    result = scrub_messages([user("Email john@x.com about card 4111 1111 1111 1111")], ALL)
    recorded = [{"name": "email", "arguments": {"to": "john@x.com", "card": "4111 1111 1111 1111"}}]
    assert apply_replacements(recorded, result.replacements) == [
        {"name": "email", "arguments": {"to": "<EMAIL_1>", "card": "<CARD_1>"}}
    ]


def test_checksums() -> None:
    assert passes_luhn("4111111111111111") and not passes_luhn("4111111111111112")
    assert passes_iban_checksum("DE89370400440532013000")
    assert not passes_iban_checksum("DE89370400440532013001")
    assert not passes_iban_checksum("DE8937")  # too short to be any country's IBAN


def test_earlier_tool_call_arguments_are_scrubbed_with_the_same_placeholders() -> None:
    messages = [
        {"role": "user", "content": "Email ana@example.org the report"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "send", "arguments": '{"to": "ana@example.org"}'},
                }
            ],
        },
    ]
    scrubbed = scrub_messages(messages, ["email"])
    arguments = scrubbed.messages[1]["tool_calls"][0]["function"]["arguments"]
    assert arguments == '{"to": "<EMAIL_1>"}' and scrubbed.counts == {"email": 2}
    assert scrubbed.messages[1]["tool_calls"][0]["id"] == "call_1"
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"to": "ana@example.org"}'
