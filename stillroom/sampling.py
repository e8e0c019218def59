"""Sampling: stream a prefix's listing -> bounded candidate pool -> read, check, dedup -> manifest.

The draw is bottom-k sampling: every key gets a priority from a hash of (seed, key), and
the k lowest are a uniform sample without replacement. Only k keys are held while the
listing streams past, so a prefix of millions of objects costs constant memory; the draw
depends on the seed and the set of keys, not on listing order or page size, and a new day
of logs leaves yesterday's picks in place unless the newcomers outrank them.

The pool holds more candidates than are needed (`oversample`) because some are rejected
(not JSON, empty, too long, duplicate, ...). Candidates are read in priority order until
the sample is full; if the pool runs dry first, the prefix is listed again with a larger
pool. With `stratify`, each stratum has its own quota: strata named by the key (a date
partition) get a pool each while listing; strata named by a document field are known only
once read, so the quota caps what is kept of one shared pool.

Counts reconcile: listed = sampled + rejected + over_quota + not_examined, checked.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Any

from stillroom.config import SamplingConfig, StratifyConfig
from stillroom.dedup import DedupConfig, Deduplicator, normalized_text
from stillroom.prompts import render_system
from stillroom.storage import (
    content_hash,
    get_bytes,
    get_json,
    iter_objects,
    put_json,
    put_jsonl,
    read_jsonl,
)
from stillroom.targets import Target, document_messages, document_tools

MAX_PASSES = 4
NO_STRATUM = ""


@dataclass(frozen=True)
class Candidate:
    key: str
    id: str
    sha256: str
    stratum: str = NO_STRATUM


@dataclass
class Manifest:
    bucket: str
    prefix: str
    seed: int
    items: list[Candidate] = field(default_factory=list)
    rejects: list[dict[str, str]] = field(default_factory=list)
    listed: int = 0
    examined: int = 0
    over_quota: int = 0
    passes: int = 0
    listed_by_stratum: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, Any]:
        reasons = Counter(r["reason"] for r in self.rejects)
        counts: dict[str, Any] = {
            "listed": self.listed,
            "examined": self.examined,
            "sampled": len(self.items),
            "rejected": len(self.rejects),
            "rejected_by_reason": dict(sorted(reasons.items())),
            "over_quota": self.over_quota,
            "not_examined": self.listed - self.examined,
            "passes": self.passes,
        }
        if self.listed_by_stratum or any(c.stratum for c in self.items):
            sampled = Counter(c.stratum for c in self.items)
            counts["strata"] = {
                s: {"listed": self.listed_by_stratum.get(s), "sampled": sampled.get(s, 0)}
                for s in sorted(set(sampled) | set(self.listed_by_stratum))
            }
        return counts

    def to_json(self) -> dict[str, Any]:
        """The manifest proper; rejects go to their own object (see `write_manifest`)."""
        return {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "seed": self.seed,
            "items": [asdict(c) for c in self.items],
            "counts": self.counts(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], rejects: list[dict[str, str]]) -> Manifest:
        counts = data["counts"]
        return cls(
            bucket=data["bucket"],
            prefix=data["prefix"],
            seed=data["seed"],
            items=[Candidate(**c) for c in data["items"]],
            rejects=rejects,
            listed=counts["listed"],
            examined=counts["examined"],
            over_quota=counts["over_quota"],
            passes=counts["passes"],
            listed_by_stratum={s: v["listed"] for s, v in counts.get("strata", {}).items()},
        )


# ---------------------------------------------------------------- checks on one document


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


def estimated_prompt_tokens(document: dict[str, Any], target: Target, chars_per_token: float):
    """The student's prompt length, estimated: the tokenizer lives with the training stage."""
    text = render_system(target.student_system_prompt, document_tools(target, document))
    text += "".join(str(m.get("content") or "") for m in document_messages(target, document))
    return math.ceil(len(text) / chars_per_token)


def dedup_text(document: dict[str, Any], target: Target) -> str:
    names = [t["function"]["name"] for t in document_tools(target, document)]
    return normalized_text(document_messages(target, document), names)


def dotted_get(document: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(document, list) and part.isdigit() and int(part) < len(document):
            document = document[int(part)]
        elif isinstance(document, dict) and part in document:
            document = document[part]
        else:
            return None
    return document


# ---------------------------------------------------------------- the draw


def priority(seed: int, key: str) -> int:
    """A key's place in the draw: uniform, seeded, independent of listing order."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{key}".encode()).digest()[:8], "big")


class Pool:
    """The k lowest-priority keys seen so far, per stratum: memory is k, not the listing."""

    def __init__(self, capacity: Callable[[str], int]) -> None:
        self.capacity = capacity
        self.heaps: dict[str, list[tuple[int, str]]] = {}
        self.overflowed: set[str] = set()  # strata with more keys than their pool holds

    def offer(self, stratum: str, rank: int, key: str) -> None:
        heap = self.heaps.setdefault(stratum, [])
        item = (-rank, key)  # heapq is a min-heap: negate to evict the highest priority
        if len(heap) < self.capacity(stratum):
            heapq.heappush(heap, item)
            return
        self.overflowed.add(stratum)
        if item > heap[0]:
            heapq.heapreplace(heap, item)

    def ordered(self) -> list[tuple[str, str]]:
        """(key, stratum) pairs, lowest priority first: the order candidates are read in."""
        merged = [(-neg, key, s) for s, heap in self.heaps.items() for neg, key in heap]
        return [(key, s) for _, key, s in sorted(merged)]


def key_stratum(stratify: StratifyConfig | None) -> Callable[[str], str]:
    if stratify is None or stratify.by != "key":
        return lambda key: NO_STRATUM
    if not stratify.pattern:
        raise ValueError("stratify.by=key needs stratify.pattern (a regex with one group)")
    pattern = re.compile(stratify.pattern)

    def stratum(key: str) -> str:
        match = pattern.search(key)
        return match.group(1) if match and match.groups() else "<other>"

    return stratum


def quota(cfg: SamplingConfig, stratum: str) -> int:
    stratify = cfg.stratify
    if stratify is None or stratum == NO_STRATUM:
        return cfg.size
    limit = stratify.quotas.get(stratum, stratify.default_quota)
    return cfg.size if limit is None else min(limit, cfg.size)


def fill_pool(
    keys: Iterable[str], cfg: SamplingConfig, oversample: float
) -> tuple[Pool, int, Counter[str]]:
    """One streaming pass over the listing: the pool, the number listed, per-stratum counts."""
    stratum_of = key_stratum(cfg.stratify)
    pool = Pool(lambda s: math.ceil(quota(cfg, s) * oversample) + cfg.read_workers)
    listed, by_stratum = 0, Counter()
    by_key = cfg.stratify is not None and cfg.stratify.by == "key"
    for key in keys:
        stratum = stratum_of(key)
        pool.offer(stratum, priority(cfg.seed, key), key)
        listed += 1
        if by_key:  # per-key work on a listing of millions: only when it is used
            by_stratum[stratum] += 1
    return pool, listed, by_stratum


# ---------------------------------------------------------------- reading the pool


class Examiner:
    """Reads candidates in priority order and decides each: kept, rejected or over quota."""

    def __init__(self, s3: Any, bucket: str, cfg: SamplingConfig, target: Target) -> None:
        self.s3, self.bucket, self.cfg, self.target = s3, bucket, cfg, target
        d = cfg.dedup
        self.dedup = Deduplicator(
            DedupConfig(
                exact=d.exact,
                near=d.near,
                threshold=d.threshold,
                num_perm=d.num_perm,
                shingle_size=d.shingle_size,
                same_numbers=d.same_numbers,
                seed=cfg.seed,
            )
        )
        self.kept: list[Candidate] = []
        self.kept_by_stratum: Counter[str] = Counter()
        self.rejects: list[dict[str, str]] = []
        self.seen: set[str] = set()  # bounded by the pool, which is bounded by `size`
        self.over_quota = 0

    @property
    def full(self) -> bool:
        return len(self.kept) >= self.cfg.size

    def stratum_full(self, stratum: str) -> bool:
        return self.kept_by_stratum[stratum] >= quota(self.cfg, stratum)

    def field_stratum(self, document: dict[str, Any]) -> str:
        stratify = self.cfg.stratify
        if stratify is None or stratify.by != "field":
            return NO_STRATUM
        if not stratify.field:
            raise ValueError("stratify.by=field needs stratify.field (a dotted path)")
        value = dotted_get(document, stratify.field)
        return "<missing>" if value is None else str(value)

    def decide(self, key: str, stratum: str, body: bytes) -> None:
        self.seen.add(key)
        reason, document = reject_reason(body, self.target)
        if document is not None:
            tokens = estimated_prompt_tokens(document, self.target, self.cfg.chars_per_token)
            if tokens > self.cfg.max_prompt_tokens:
                reason = "too_long"
        if reason:
            self.rejects.append({"key": key, "reason": reason})
            return
        assert document is not None  # reject_reason returns a reason or the document
        stratum = stratum or self.field_stratum(document)
        if self.stratum_full(stratum):
            self.over_quota += 1
            return
        duplicate = self.dedup.check(key, dedup_text(document, self.target))
        if duplicate:
            self.rejects.append({"key": key, "reason": duplicate, "of": self.dedup.last_match})
            return
        self.kept.append(
            Candidate(
                key=key,
                id=str(document.get("id", key)),
                sha256=content_hash(document),
                stratum=stratum,
            )
        )
        self.kept_by_stratum[stratum] += 1

    def wanted(self, ordered: list[tuple[str, str]]) -> Iterator[tuple[str, str]]:
        """Candidates still worth reading: not read before, in a stratum not yet full."""
        for key, stratum in ordered:
            if self.full:
                return
            if key not in self.seen and not (stratum and self.stratum_full(stratum)):
                yield key, stratum

    def examine(self, ordered: list[tuple[str, str]]) -> None:
        # Read in chunks so that reading stops soon after the sample is full.
        chunk_size = self.cfg.read_workers * 4
        wanted = self.wanted(ordered)
        with ThreadPoolExecutor(max_workers=self.cfg.read_workers) as pool:
            while chunk := list(islice(wanted, chunk_size)):
                bodies = pool.map(lambda ks: get_bytes(self.s3, self.bucket, ks[0]), chunk)
                for (key, stratum), body in zip(chunk, bodies, strict=True):
                    if not self.full:
                        self.decide(key, stratum, body)


def short_strata(pool: Pool, examiner: Examiner) -> bool:
    """Would a bigger pool help? Only where a stratum is short and had keys left over."""
    if examiner.full:
        return False
    return any(not examiner.stratum_full(s) for s in pool.overflowed)


def sample_documents(s3: Any, bucket: str, cfg: SamplingConfig, target: Target) -> Manifest:
    manifest = Manifest(bucket=bucket, prefix=cfg.prefix, seed=cfg.seed)
    examiner = Examiner(s3, bucket, cfg, target)
    oversample = cfg.oversample
    for manifest.passes in range(1, MAX_PASSES + 1):
        keys = (obj["Key"] for obj in iter_objects(s3, bucket, cfg.prefix))
        pool, manifest.listed, by_stratum = fill_pool(keys, cfg, oversample)
        examiner.examine(pool.ordered())
        if not short_strata(pool, examiner):
            break
        oversample *= 2
    manifest.items = sorted(examiner.kept, key=lambda c: c.key)
    manifest.rejects = sorted(examiner.rejects, key=lambda r: r["key"])
    manifest.examined = len(examiner.seen)
    manifest.over_quota = examiner.over_quota
    manifest.listed_by_stratum = dict(sorted(by_stratum.items()))  # empty unless by key
    check_counts(manifest)
    return manifest


def check_counts(manifest: Manifest) -> None:
    c = manifest.counts()
    if c["sampled"] + c["rejected"] + c["over_quota"] != c["examined"]:
        raise RuntimeError(f"sampling lost documents: {c}")


def rejects_key(manifest_key: str) -> str:
    return manifest_key.rsplit("/", 1)[0] + "/rejects.jsonl"


def write_manifest(s3: Any, bucket: str, key: str, manifest: Manifest) -> None:
    put_json(s3, bucket, key, manifest.to_json())
    put_jsonl(s3, bucket, rejects_key(key), manifest.rejects)


def read_manifest(s3: Any, bucket: str, key: str) -> Manifest:
    return Manifest.from_json(get_json(s3, bucket, key), read_jsonl(s3, bucket, rejects_key(key)))
