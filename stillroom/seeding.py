"""Demo documents: BFCL single-turn cases written to S3 as if they were logged requests.

Each case becomes `requests/<date>/<id>.json` with OpenAI-style `messages` and `tools`; the
BFCL ground truth becomes the replay teacher's recorded answer for that request. BFCL uses
a Python-flavoured schema dialect (`dict`, `float`, `tuple`, `any`) and dotted function
names; both are converted to what the OpenAI tools API accepts.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stillroom.config import SeedConfig
from stillroom.pii import apply_replacements, scrub_messages
from stillroom.storage import content_hash, ensure_bucket, put_bytes, put_json

BFCL_TYPES = {"dict": "object", "float": "number", "tuple": "array"}
# Schema keywords whose values are themselves schemas (or maps of them).
SCHEMA_MAPS = ("properties",)
SCHEMA_NODES = ("items", "additionalProperties")


def bfcl_data_dir() -> Path:
    """Locate BFCL's data without importing the package (its __init__ pulls heavy deps)."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("bfcl-eval is not installed: run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def tool_name(name: str) -> str:
    """OpenAI function names allow [a-zA-Z0-9_-] only; BFCL uses dots (`math.factorial`)."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", name)


def convert_schema(node: dict[str, Any]) -> dict[str, Any]:
    """Translate one BFCL schema node (recursively) into standard JSON Schema."""
    out = dict(node)
    kind = out.get("type")
    if kind == "any":
        out.pop("type")
    elif isinstance(kind, str):
        out["type"] = BFCL_TYPES.get(kind, kind)
    for key in SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: convert_schema(sub) for name, sub in out[key].items()}
    for key in SCHEMA_NODES:
        if isinstance(out.get(key), dict):
            out[key] = convert_schema(out[key])
    return out


def to_tool(function: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": tool_name(function["name"]),
            "description": function.get("description", ""),
            "parameters": convert_schema(function.get("parameters", {"type": "dict"})),
        },
    }


def first_accepted(value: Any) -> tuple[bool, Any]:
    """BFCL lists accepted values per argument; "" first means 'may be omitted'."""
    if isinstance(value, dict):
        return True, ground_truth_arguments(value)
    if not isinstance(value, list) or not value:
        return True, value
    first = value[0]
    if first == "":
        return False, None
    if isinstance(first, dict):
        return True, ground_truth_arguments(first)
    return True, first


def ground_truth_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, accepted in arguments.items():
        present, value = first_accepted(accepted)
        if present:
            out[name] = value
    return out


def recorded_tool_calls(ground_truth: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"name": tool_name(name), "arguments": ground_truth_arguments(args)}
        for call in ground_truth
        for name, args in call.items()
    ]


def read_jsonl_file(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_bfcl_category(category: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Cases of one category joined with their ground truth: question, functions, answer."""
    data = bfcl_data_dir()
    cases = read_jsonl_file(data / f"BFCL_v4_{category}.json")
    answers = {
        a["id"]: a for a in read_jsonl_file(data / "possible_answer" / f"BFCL_v4_{category}.json")
    }
    joined = [dict(case, ground_truth=answers[case["id"]]["ground_truth"]) for case in cases]
    return joined[:limit] if limit is not None else joined


def to_document(case: dict[str, Any], category: str, date: str) -> dict[str, Any]:
    """A logged production request: what a client sent to its LLM provider."""
    return {
        "id": case["id"],
        "source": f"bfcl/{category}",
        "logged_at": f"{date}T00:00:00Z",
        "messages": case["question"][0],
        "tools": [to_tool(f) for f in case["function"]],
    }


DEMO_CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple")


def labelled_cases(n: int, seed: int) -> list[dict[str, Any]]:
    """`n` BFCL cases as labelled records (the ground truth standing in for the teacher's
    answer), drawn with `seed`: training inputs for benchmarks and GPU checks that skip the
    sampling and labelling stages."""
    cases = [case for category in DEMO_CATEGORIES for case in load_bfcl_category(category)]
    records = []
    for case in random.Random(seed).sample(cases, n):
        document = to_document(case, "bench", "2026-01-01")
        records.append(
            {
                "id": document["id"],
                "sha256": content_hash(document),
                "messages": document["messages"],
                "tools": document["tools"],
                "output": {"tool_calls": recorded_tool_calls(case["ground_truth"])},
            }
        )
    return records


def replay_key(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
    """Replay lookup key: the request minus system prompts, so prompt edits keep replaying."""
    user_side = [m for m in messages if m.get("role") != "system"]
    names = sorted(t["function"]["name"] for t in tools)
    return content_hash({"messages": user_side, "tools": names})


# Malformed objects a real request log does contain; they exercise every reject reason.
BAD_DOCUMENTS: list[tuple[str, bytes]] = [
    ("bad-not-json", b'{"id": "bad-not-json", "messages": [ this is not json'),
    ("bad-empty", b""),
    ("bad-missing-messages", json.dumps({"id": "bad-missing-messages", "tools": []}).encode()),
    ("bad-not-utf8", b'{"id": "\xff\xfe"}'),
]


def recording(document: dict[str, Any], calls: list[dict[str, Any]], pii: Sequence[str]) -> dict:
    """The replay teacher's answer for a document, as a real teacher would see it.

    The labeller scrubs PII before sending, so the recording is keyed on the scrubbed
    messages, and the recorded arguments use the same placeholders the prompt shows.
    """
    scrubbed = scrub_messages(document["messages"], pii)
    return {
        "key": replay_key(scrubbed.messages, document["tools"]),
        "id": document["id"],
        "tool_calls": apply_replacements(calls, scrubbed.replacements),
    }


def seed_bfcl(
    s3: Any, bucket: str, cfg: SeedConfig, replay_path: Path, pii: Sequence[str] = ()
) -> dict[str, int]:
    """Write BFCL cases to `requests/<date>/`, the teacher recordings to `replay_path`."""
    ensure_bucket(s3, bucket)
    recordings = []
    documents = 0
    for category in cfg.categories:
        for case in load_bfcl_category(category, cfg.per_category):
            document = to_document(case, category, cfg.date)
            put_json(s3, bucket, f"requests/{cfg.date}/{document['id']}.json", document)
            calls = recorded_tool_calls(case["ground_truth"])
            recordings.append(recording(document, calls, pii))
            documents += 1
    for name, body in BAD_DOCUMENTS[: cfg.bad_documents]:
        put_bytes(s3, bucket, f"requests/{cfg.date}/{name}.json", body, "application/json")
    replay_path.parent.mkdir(parents=True, exist_ok=True)
    replay_path.write_text("".join(json.dumps(r) + "\n" for r in recordings))
    return {"documents": documents, "bad_documents": min(cfg.bad_documents, len(BAD_DOCUMENTS))}
