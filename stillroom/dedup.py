"""Request deduplication before anything is paid for: exact and near-duplicate.

Exact duplicates share a hash of the normalised request (case, Unicode form and whitespace do
not count). Near duplicates are found with MinHash over character shingles and an LSH index,
then confirmed on the estimated Jaccard similarity, so an LSH bucket collision alone never
drops a request. Requests that share a template but differ in their numbers are useful
training data, never duplicates: a near match must also carry the same numbers, in the same
order (`DedupConfig.same_numbers`). A changed name is only a few shingles, though, so the
threshold is what keeps "weather in Paris" apart from "weather in Lyon" in a long request.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasketch import MinHash

# datasketch's default scheme since 2.0.0; named so permutations can be shared explicitly.
MINHASH_SCHEME = "affine32"


def normalize(text: str) -> str:
    """NFKC then casefold then collapsed whitespace: what a human would call the same text."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()


def content_text(content: Any) -> str:
    """A message's text, whether content is a string or a list of `{"type": "text"}` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def normalized_text(messages: list[dict[str, Any]], tool_names: Sequence[str]) -> str:
    """The request as dedup sees it: non-system contents, then the sorted tool names.

    System prompts are excluded because they are the same for every request of a client, so
    they would make unrelated requests look alike. Tool names are part of the request: the
    same question asked against different tools needs a different answer.
    """
    contents = [content_text(m.get("content")) for m in messages if m.get("role") != "system"]
    names = sorted(normalize(name) for name in tool_names)
    return normalize("\n".join(contents)) + " | tools: " + " ".join(names)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def numbers_in(text: str) -> tuple[str, ...]:
    """The numbers in a text, in order: "from 3 to 5" and "from 5 to 3" are different asks."""
    return tuple(re.findall(r"\d+(?:[.,]\d+)*", text))


def shingles(text: str, size: int) -> set[str]:
    """Character shingles; a text shorter than one shingle is its own single shingle."""
    if len(text) <= size:
        return {text}
    return {text[i : i + size] for i in range(len(text) - size + 1)}


@dataclass(frozen=True)
class DedupConfig:
    exact: bool = True  # drop requests whose normalised text was already kept
    near: bool = True  # drop requests whose estimated Jaccard to a kept one is >= threshold
    # Estimated Jaccard of 5-character shingles. On the 1000 BFCL demo documents the closest
    # pairs are one question offered with and without distractor tools (exact J up to 0.89):
    # 0.8 drops 9-16 of them depending on the seed, 0.9 drops 0-2, 0.95 none.
    threshold: float = 0.9
    num_perm: int = 128  # MinHash size: std error sqrt(J(1-J)/num_perm), ~0.03 near J=0.9
    shingle_size: int = 5  # characters; short enough that one changed word moves few shingles
    seed: int = 1  # MinHash permutations: the same seed gives the same decisions
    # Requests whose numbers differ are never near duplicates: in a tool-calling request the
    # numbers are nearly always arguments, and one changed number moves few shingles
    # (J ~ 0.92 for one changed amount in a 120-character request).
    same_numbers: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.num_perm < 2:
            raise ValueError(f"num_perm must be at least 2, got {self.num_perm}")
        if self.shingle_size < 1:
            raise ValueError(f"shingle_size must be at least 1, got {self.shingle_size}")


class Deduplicator:
    """Decides, request by request, whether each one is new; remembers only kept requests.

    `check` returns None for a new request (now kept), "duplicate" for an exact normalised
    match, "near_duplicate" for a near match; `last_match` then holds the key of the kept
    request it duplicates (None after a new one). Memory is one hash and one MinHash per kept
    request, so it grows with the sample being deduplicated, never with what was dropped.
    """

    def __init__(self, cfg: DedupConfig) -> None:
        # Imported here, like torch elsewhere: datasketch pulls in scipy (~1.5 s to import).
        from datasketch import MinHash, MinHashLSH

        self.cfg = cfg
        self.last_match: str | None = None
        self._by_hash: dict[str, str] = {}  # normalised-text hash -> kept key
        # kept key -> (keeping order, numbers, MinHash); the MinHash is None when near is off
        self._kept: dict[str, tuple[int, tuple[str, ...], MinHash | None]] = {}
        self._lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
        # Generated once and shared by every MinHash: they depend only on seed and num_perm.
        self._permutations = MinHash(num_perm=cfg.num_perm, seed=cfg.seed).permutations
        self._counts = {"duplicate": 0, "near_duplicate": 0}

    @property
    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def check(self, key: str, text: str) -> str | None:
        """`text` is the request's `normalized_text`; `key` identifies it (a document id)."""
        digest = text_hash(text)
        if self.cfg.exact and digest in self._by_hash:
            return self.record_match("duplicate", self._by_hash[digest])
        if key in self._kept:
            raise ValueError(f"key {key!r} was already kept: keys must be unique")
        numbers = numbers_in(text)
        minhash = None
        if self.cfg.near:
            minhash = self.minhash_of(text)
            match = self.closest_kept(minhash, numbers)
            if match is not None:
                return self.record_match("near_duplicate", match)
            self._lsh.insert(key, minhash)
        self._by_hash.setdefault(digest, key)
        self._kept[key] = (len(self._kept), numbers, minhash)
        self.last_match = None
        return None

    def minhash_of(self, text: str) -> MinHash:
        from datasketch import MinHash

        minhash = MinHash(
            num_perm=self.cfg.num_perm,
            seed=self.cfg.seed,
            permutations=self._permutations,
            scheme=MINHASH_SCHEME,
        )
        minhash.update_batch([s.encode() for s in shingles(text, self.cfg.shingle_size)])
        return minhash

    def closest_kept(self, minhash: MinHash, numbers: tuple[str, ...]) -> str | None:
        """The kept key most similar to `minhash` at or above the threshold, else None.

        LSH only proposes candidates (bucket collisions can be far below the threshold), so
        each is confirmed on its estimated Jaccard; ties go to the earliest kept request, so
        the decision does not depend on the index's set ordering.
        """
        best: tuple[float, int, str] | None = None
        for key in self._lsh.query(minhash):
            order, kept_numbers, kept = self._kept[key]
            if kept is None or (self.cfg.same_numbers and kept_numbers != numbers):
                continue
            score = (minhash.jaccard(kept), -order, key)
            best = score if best is None or score > best else best
        return best[2] if best is not None and best[0] >= self.cfg.threshold else None

    def record_match(self, reason: str, kept_key: str) -> str:
        self._counts[reason] += 1
        self.last_match = kept_key
        return reason
