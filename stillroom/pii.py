"""PII scrubbing: personal data is replaced by placeholders before a request leaves for a paid
teacher API.

Placeholders are stable within one document (`<EMAIL_1>` stands for the same address in every
message of it), so the teacher's answer stays coherent and `apply_replacements` can rewrite a
recorded answer to match the scrubbed prompt. Detection errs towards precision on numbers:
this is tool-calling data full of quantities, years, dates, amounts and coordinates, and a
scrubbed quantity corrupts the training example. So checksummed kinds (card, IBAN) must pass
their checksum, and phone numbers must be phone-shaped (a `+` country code or separator-grouped
digits), never a bare run of digits.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

PII_KINDS: tuple[str, ...] = ("email", "phone", "card", "iban", "ip", "national_id")

# Which kind claims a span first when two patterns could match overlapping text. Earlier kinds
# are more specific, so they win:
# - email first: a local part may itself hold a phone or card-like digit run
#   (`5551234567@sms.example.com`); the whole address is the personal datum.
# - iban before card: an IBAN's spaced digit groups (`DE89 3704 0044 0532 0130 00`) can form a
#   Luhn-valid card-shaped run on their own, one time in ten.
# - card, iban and national_id before phone: they are validated (Luhn, mod-97, SSN/NINO rules)
#   while phone is matched by shape only, so a grouped card number must not become a phone.
# - ip before phone, for the same reason: an `ipaddress`-validated span beats a shape.
DETECTION_ORDER: tuple[str, ...] = ("email", "iban", "card", "national_id", "ip", "phone")

Span = tuple[int, int]

# --- patterns -------------------------------------------------------------------------------
# Every pattern refuses to start or end inside a longer word or number (`\w`, or a `.`/`-`
# that continues a number), so pieces of IDs, decimals and dates are never matched.

EMAIL_RE = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,63}(?![\w-])"
)

# Contiguous 13-19 digits, or digit groups of 3-6 with one consistent separator (4-4-4-4,
# 4-6-5 Amex, 4-4-4-4-3). The digit count and Luhn check are applied afterwards.
CARD_RE = re.compile(
    r"(?<![\w.,-])(?:\d{13,19}|\d{3,6}(?P<sep>[ -])\d{3,6}(?:(?P=sep)\d{3,6}){1,4})"
    r"(?![\w]|[.,-]\d)"
)
# Major industry identifiers 2-6 (Mastercard 2-series, Amex/JCB/Diners, Visa, Mastercard,
# Discover/Maestro/UnionPay). Excluding 0/1/7/8/9 keeps epoch-millisecond timestamps (13 digits,
# leading 1) and long IDs out: any digit string passes Luhn one time in ten.
CARD_FIRST_DIGITS = "23456"

# Country code, check digits, then the BBAN contiguous or in groups of four (paper format).
IBAN_RE = re.compile(
    r"(?<![\w])[A-Za-z]{2}\d{2}"
    r"(?:[A-Za-z0-9]{11,30}|(?: [A-Za-z0-9]{4}){2,7}(?: [A-Za-z0-9]{1,3})?)(?![\w])"
)
IBAN_LENGTHS = range(15, 35)  # Norway's 15 is the shortest; 34 is the standard's maximum.

# US SSN: area 000, 666 and 9xx, group 00 and serial 0000 are never issued.
SSN_RE = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w]|-\d)")
# UK NINO per HMRC: first letter not D F I Q U V, second not D F I O Q U V, prefixes BG GB KN NK
# NT TN ZZ unallocated, suffix A-D. (QQ is HMRC's specimen prefix and is never issued.)
NINO_RE = re.compile(
    r"(?<![\w])(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
    r"(?: ?\d{2}){3} ?[A-D](?![\w])"
)

# Candidates only: octet ranges and IPv6 syntax are checked by the `ipaddress` module.
# "1.2.3.4.5" (a version string) is refused because the match may not be preceded by a dot
# or followed by `.digit`; a 4-part dotted quad with octets <= 255 is an address.
IPV4_RE = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w]|\.\d)")
IPV6_RE = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{1,4})?"
    r"(?:%[\w.]+)?(?![\w]|\.\d)"
)

# Phone shapes only; a bare digit run is never a phone here (it is far more often a quantity).
PHONE_RES = (
    # +CC then separated groups: +44 20 7946 0958, +1 (555) 123-4567, +44 (0)20 7946 0958
    re.compile(
        r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(\d{1,4}\)[ .-]?\d{1,5}|[ .-]\d{1,5})(?:[ .-]\d{1,5}){0,5}"
        r"(?![\w]|[.,-]\d)"
    ),
    # +CC contiguous (E.164): +14155552671. 10+ digits so "+1000000" stays an amount.
    re.compile(r"(?<![\w+])\+[1-9]\d{9,14}(?![\w]|[.,-]\d)"),
    # Parenthesised area code: (555) 123-4567, (020) 7946 0958; 2+ digits keeps "(1) 2000" out.
    re.compile(r"(?<![\w(])\(\d{2,5}\) ?\d{3,4}[ .-]\d{3,4}(?![\w]|[.,-]\d)"),
    # NANP with one consistent separator: 555-123-4567, 555.123.4567, 1-800-555-0199.
    # Strictly 3-3-4, so dates (4-2-2) and European thousands (10.000.000) do not fit.
    re.compile(r"(?<![\w.+-])(?:1[-.])?\d{3}(?P<sep>[-.])\d{3}(?P=sep)\d{4}(?![\w]|[.,-]\d)"),
)
PHONE_DIGITS = range(7, 16)
# "+40.712776" is a signed coordinate, not a phone: a single dot and no other separator.
SIGNED_DECIMAL_RE = re.compile(r"\+?\d+\.\d+")


# --- validators -----------------------------------------------------------------------------


def passes_luhn(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        value = int(char)
        if i % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def is_card(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    return 13 <= len(digits) <= 19 and digits[0] in CARD_FIRST_DIGITS and passes_luhn(digits)


def passes_iban_checksum(compact: str) -> bool:
    """ISO 13616: country and check digits moved to the end, letters as 10-35, mod 97 is 1."""
    if len(compact) not in IBAN_LENGTHS or not compact.isalnum():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def is_ip(candidate: str) -> bool:
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    if address.version == 6:
        # Two or more non-empty groups: keeps Python slices like "[::2]" out.
        return sum(1 for group in candidate.split("%")[0].split(":") if group) >= 2
    return True


def is_phone(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    return len(digits) in PHONE_DIGITS and not SIGNED_DECIMAL_RE.fullmatch(candidate)


# --- detectors: text -> spans of one kind ---------------------------------------------------


def find_matches(pattern: re.Pattern[str], text: str, accept: Callable[[str], bool]) -> list[Span]:
    return [m.span() for m in pattern.finditer(text) if accept(m.group())]


def longest_valid_prefix(candidate: str, accept: Callable[[str], bool]) -> int | None:
    """Length of the longest run of whole space/dash-separated groups that passes `accept`.

    Grouped patterns are greedy and can swallow a following word or number
    ("BE68 5390 0754 7034 then", "4111 1111 1111 1111 2023"); dropping trailing groups until
    the checksum passes recovers the real value instead of leaking it.
    """
    ends = [m.start() for m in re.finditer(r"[ -]", candidate)] + [len(candidate)]
    for end in reversed(ends):
        if accept(candidate[:end]):
            return end
    return None


def find_trimmed(pattern: re.Pattern[str], text: str, accept: Callable[[str], bool]) -> list[Span]:
    """Like `find_matches`, but a greedy match is cut back to its valid prefix, and the scan
    resumes right after that prefix: the swallowed groups may start the next value."""
    spans = []
    position = 0
    while match := pattern.search(text, position):
        length = longest_valid_prefix(match.group(), accept)
        if length is None:
            position = match.start() + 1
        else:
            spans.append((match.start(), match.start() + length))
            position = match.start() + length
    return spans


def find_emails(text: str) -> list[Span]:
    return [m.span() for m in EMAIL_RE.finditer(text)]


def find_cards(text: str) -> list[Span]:
    return find_trimmed(CARD_RE, text, is_card)


def find_ibans(text: str) -> list[Span]:
    return find_trimmed(IBAN_RE, text, lambda s: passes_iban_checksum(compact_iban(s)))


def find_national_ids(text: str) -> list[Span]:
    return [m.span() for m in SSN_RE.finditer(text)] + [m.span() for m in NINO_RE.finditer(text)]


def find_ips(text: str) -> list[Span]:
    # IPv6 first: an IPv4-mapped address (`::ffff:192.0.2.1`) ends in a dotted quad.
    spans = []
    for match in IPV6_RE.finditer(text):
        value = match.group()
        # A sentence may end with a colon right after an address ("fe80::1: that one").
        if not is_ip(value) and value.endswith(":") and not value.endswith("::"):
            value = value[:-1]
        if is_ip(value):
            spans.append((match.start(), match.start() + len(value)))
    return spans + find_matches(IPV4_RE, text, is_ip)


def find_phones(text: str) -> list[Span]:
    return [span for pattern in PHONE_RES for span in find_matches(pattern, text, is_phone)]


DETECTORS: dict[str, Callable[[str], list[Span]]] = {
    "email": find_emails,
    "phone": find_phones,
    "card": find_cards,
    "iban": find_ibans,
    "ip": find_ips,
    "national_id": find_national_ids,
}


def find_pii(text: str, kinds: Sequence[str]) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, kind) spans, sorted; earlier kinds in DETECTION_ORDER win."""
    claimed: list[tuple[int, int, str]] = []
    for kind in DETECTION_ORDER:
        if kind not in kinds:
            continue
        for start, end in DETECTORS[kind](text):
            if all(end <= s or start >= e for s, e, _ in claimed):
                claimed.append((start, end, kind))
    return sorted(claimed)


# --- placeholders ---------------------------------------------------------------------------


def compact_iban(value: str) -> str:
    return value.replace(" ", "").upper()


def canonical_value(kind: str, value: str) -> str:
    """Formatting-free identity, so `4111 1111 1111 1111` and `4111111111111111` share a
    placeholder within a document."""
    if kind == "email":
        return value.casefold()
    if kind in ("card", "phone"):
        return ("+" if value.startswith("+") else "") + re.sub(r"\D", "", value)
    if kind == "iban":
        return compact_iban(value)
    if kind == "ip":
        return str(ipaddress.ip_address(value))
    return re.sub(r"[\s-]", "", value.upper())


def placeholder_prefix(kind: str) -> str:
    return f"<{kind.upper()}_"


def placeholder_for(kind: str, value: str, replacements: dict[str, str]) -> str:
    """The document's placeholder for this value, allocating the kind's next number if new."""
    if value in replacements:
        return replacements[value]
    prefix = placeholder_prefix(kind)
    canonical = canonical_value(kind, value)
    seen = {p for p in replacements.values() if p.startswith(prefix)}
    for original, placeholder in replacements.items():
        if placeholder in seen and canonical_value(kind, original) == canonical:
            replacements[value] = placeholder
            return placeholder
    replacements[value] = placeholder = f"{prefix}{len(seen) + 1}>"
    return placeholder


# --- public API -----------------------------------------------------------------------------


@dataclass(repr=False)
class Scrubbed:
    messages: list[dict[str, Any]]  # deep copies; the caller's messages are not mutated
    counts: dict[str, int]  # occurrences replaced per kind, only kinds with at least one
    replacements: dict[str, str]  # original -> placeholder; in memory only, never logged

    def __repr__(self) -> str:
        # A repr can end up in a log or a Prefect artifact: never show the originals.
        return f"Scrubbed(messages={len(self.messages)}, counts={self.counts})"


def validate_kinds(kinds: Sequence[str]) -> None:
    if isinstance(kinds, str):
        raise ValueError(f"kinds must be a sequence of kind names, not the string {kinds!r}")
    unknown = sorted(set(kinds) - set(PII_KINDS))
    if unknown:
        raise ValueError(f"unknown PII kinds {unknown}; known kinds are {list(PII_KINDS)}")


def scrub_text(
    text: str,
    kinds: Sequence[str],
    replacements: dict[str, str] | None = None,
    counts: Counter[str] | None = None,
) -> str:
    """`text` with each detected value replaced by its placeholder.

    Pass the same `replacements` and `counts` for every text of one document: they carry the
    placeholder numbering and the per-kind tallies across calls, and are updated in place.
    """
    validate_kinds(kinds)
    replacements = {} if replacements is None else replacements
    counts = Counter() if counts is None else counts
    pieces = []
    position = 0
    for start, end, kind in find_pii(text, kinds):
        pieces += [text[position:start], placeholder_for(kind, text[start:end], replacements)]
        counts[kind] += 1
        position = end
    return "".join(pieces) + text[position:]


def scrub_content(
    content: Any, kinds: Sequence[str], replacements: dict[str, str], counts: Counter[str]
) -> Any:
    """A message's content, plain string or list of parts; non-text parts pass through."""
    if isinstance(content, str):
        return scrub_text(content, kinds, replacements, counts)
    if isinstance(content, list):
        for part in content:
            if (
                isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ):
                part["text"] = scrub_text(part["text"], kinds, replacements, counts)
    return content


def scrub_messages(messages: list[dict[str, Any]], kinds: Sequence[str]) -> Scrubbed:
    """One document's messages scrubbed with shared numbering.

    Rewritten: each message's `content`, and the arguments of earlier assistant tool calls
    (a multi-turn log repeats the user's values there). Roles, names and ids stay.
    """
    validate_kinds(kinds)
    scrubbed = copy.deepcopy(messages)
    replacements: dict[str, str] = {}
    counts: Counter[str] = Counter()
    for message in scrubbed:
        if "content" in message:
            message["content"] = scrub_content(message["content"], kinds, replacements, counts)
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                function["arguments"] = scrub_text(
                    function["arguments"], kinds, replacements, counts
                )
    return Scrubbed(scrubbed, {k: n for k, n in counts.items() if n}, replacements)


def apply_replacements(value: Any, replacements: dict[str, str]) -> Any:
    """A copy of a JSON-like value with known originals inside its strings replaced.

    Used to make a recorded answer match a scrubbed prompt. Longer originals are tried first
    (an address that contains a shorter one), and an original only matches as a whole token,
    so `10.0.0.1` does not rewrite the start of `10.0.0.12`. Dict keys (argument names) and
    non-string scalars are left alone.
    """
    if not replacements:
        return copy.deepcopy(value)
    originals = sorted(replacements, key=len, reverse=True)
    pattern = re.compile(
        r"(?<![0-9A-Za-z])(?:" + "|".join(map(re.escape, originals)) + r")(?![0-9A-Za-z])"
    )
    return replace_in_value(value, pattern, replacements)


def replace_in_value(value: Any, pattern: re.Pattern[str], replacements: dict[str, str]) -> Any:
    if isinstance(value, str):
        return pattern.sub(lambda m: replacements[m.group()], value)
    if isinstance(value, dict):
        return {k: replace_in_value(v, pattern, replacements) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_in_value(v, pattern, replacements) for v in value]
    return value
