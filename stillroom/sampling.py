"""Sampling: list a prefix -> validate each document -> seeded reservoir sample -> manifest.

Every listed object ends either in the sample's candidate pool or in `rejects` with a
reason, so `listed = valid + rejected` always holds (and is checked). The draw is reservoir
sampling over the valid documents in listing order (S3 lists keys in lexicographic order),
so the same seed over the same bucket draws the same documents, and the sample itself
stays bounded by its size.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from stillroom.storage import content_hash, get_bytes, iter_objects, put_json
from stillroom.targets import Target


@dataclass(frozen=True)
class Candidate:
    key: str
    id: str
    sha256: str


@dataclass
class Manifest:
    bucket: str
    prefix: str
    seed: int
    items: list[Candidate] = field(default_factory=list)
    rejects: list[dict[str, str]] = field(default_factory=list)
    listed: int = 0
    valid: int = 0

    def counts(self) -> dict[str, Any]:
        reasons = Counter(r["reason"] for r in self.rejects)
        return {
            "listed": self.listed,
            "valid": self.valid,
            "rejected": len(self.rejects),
            "rejected_by_reason": dict(sorted(reasons.items())),
            "sampled": len(self.items),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "seed": self.seed,
            "items": [c.__dict__ for c in self.items],
            "rejects": self.rejects,
            "counts": self.counts(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        return cls(
            bucket=data["bucket"],
            prefix=data["prefix"],
            seed=data["seed"],
            items=[Candidate(**c) for c in data["items"]],
            rejects=data["rejects"],
            listed=data["counts"]["listed"],
            valid=data["counts"]["valid"],
        )


def reject_reason(body: bytes, target: Target) -> tuple[str | None, dict[str, Any] | None]:
    """(reason, None) for an unusable document, (None, document) for a usable one."""
    if not body.strip():
        return "empty", None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "not_utf8", None
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return "not_json", None
    if not isinstance(document, dict):
        return "not_an_object", None
    messages = document.get(target.input.messages_field)
    if not isinstance(messages, list) or not messages:
        return "missing_messages", None
    if not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
        return "malformed_messages", None
    if target.kind == "tool_call" and not document.get(target.input.tools_field):
        return "missing_tools", None
    return None, document


def reservoir_sample(items: Iterable[Candidate], size: int, seed: int) -> list[Candidate]:
    """Algorithm R: a uniform sample of `size` from a stream of unknown length."""
    rng = random.Random(seed)
    reservoir: list[Candidate] = []
    for seen, item in enumerate(items):
        if seen < size:
            reservoir.append(item)
        else:
            slot = rng.randint(0, seen)
            if slot < size:
                reservoir[slot] = item
    return sorted(reservoir, key=lambda c: c.key)


def fetch_bodies(
    s3: Any, bucket: str, keys: Iterable[str], workers: int
) -> Iterator[tuple[str, bytes]]:
    """Fetch objects concurrently while keeping listing order (needed for a seeded draw)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from zip(keys, pool.map(lambda k: get_bytes(s3, bucket, k), keys), strict=True)


def sample_documents(
    s3: Any, bucket: str, prefix: str, size: int, seed: int, target: Target, workers: int = 8
) -> Manifest:
    manifest = Manifest(bucket=bucket, prefix=prefix, seed=seed)
    keys = [obj["Key"] for obj in iter_objects(s3, bucket, prefix)]
    manifest.listed = len(keys)

    def valid_candidates() -> Iterator[Candidate]:
        for key, body in fetch_bodies(s3, bucket, keys, workers):
            reason, document = reject_reason(body, target)
            if reason:
                manifest.rejects.append({"key": key, "reason": reason})
                continue
            assert document is not None
            manifest.valid += 1
            yield Candidate(key=key, id=str(document.get("id", key)), sha256=content_hash(document))

    manifest.items = reservoir_sample(valid_candidates(), size, seed)
    if manifest.valid + len(manifest.rejects) != manifest.listed:
        raise RuntimeError("sampling lost documents: listed != valid + rejected")
    return manifest


def write_manifest(s3: Any, bucket: str, key: str, manifest: Manifest) -> None:
    put_json(s3, bucket, key, manifest.to_json())
