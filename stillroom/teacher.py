"""Labelling: ask the teacher (any OpenAI-compatible API) for each sampled document.

Every sampled document ends as exactly one labelled, quarantined or skipped record, each
with a reason, so `sampled = labelled + quarantined + skipped` holds by construction and is
checked. What leaves for the teacher has had its PII scrubbed (`pii`). Answers are cached
in S3 under a content-addressed key (teacher model, prompt version, the request with its
sampling params) the moment they arrive: a rerun, a run resumed after a crash, or a second
machine never pays twice for the same answer.

Requests are paced to the provider's limits (`ratelimit`), retried with jittered backoff on
429/5xx/timeouts/connection errors (honouring `Retry-After`), and counted against a failure
budget: when the teacher keeps failing, the run stops instead of paying on. SIGTERM/SIGINT
stop it gracefully: nothing new is sent, answers in flight are still cached.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import openai
from botocore.exceptions import ClientError

from stillroom.config import Price, TeacherConfig
from stillroom.pii import scrub_messages
from stillroom.ratelimit import RateLimiter, backoff_delay
from stillroom.sampling import Candidate, Manifest
from stillroom.storage import (
    content_hash,
    get_bytes,
    get_json_if_exists,
    put_json,
    put_jsonl,
)
from stillroom.targets import Target, document_messages, document_tools, validate_answer

log = logging.getLogger(__name__)

CACHE_PREFIX = "teacher-cache"
RATIONALE_INSTRUCTION = "First explain your choice in one or two sentences, then answer."
# Worth retrying: the same request can succeed a moment later. Anything else (400, 401,
# 404, ...) will fail the same way again and only costs time.
RETRYABLE = (
    openai.RateLimitError,
    openai.InternalServerError,
    openai.APITimeoutError,
    openai.APIConnectionError,
)


# ---------------------------------------------------------------- result and its books


@dataclass
class LabelResult:
    labelled: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    teacher_calls: int = 0  # answers received and paid for in this run
    cache_hits: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    repaired: int = 0
    prompt_tokens: int = 0  # paid in this run
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0  # what the cache saved this run
    cached_completion_tokens: int = 0
    pii: Counter[str] = field(default_factory=Counter)
    failures: int = 0
    stopped: str | None = None  # why the run stopped early, if it did
    price: Price | None = None

    @property
    def done(self) -> int:
        return len(self.labelled) + len(self.quarantined) + len(self.skipped)

    def cost_usd(self, cached: bool = False) -> float | None:
        if self.price is None:
            return None
        prompt = self.cached_prompt_tokens if cached else self.prompt_tokens
        completion = self.cached_completion_tokens if cached else self.completion_tokens
        return (
            prompt * self.price.input_per_1m + completion * self.price.output_per_1m
        ) / 1_000_000

    def counts(self) -> dict[str, Any]:
        paid, saved = self.cost_usd(), self.cost_usd(cached=True)
        total = None if paid is None or saved is None else paid + saved
        return {
            "labelled": len(self.labelled),
            "quarantined": len(self.quarantined),
            "quarantined_by_reason": reason_counts(self.quarantined),
            "skipped": len(self.skipped),
            "skipped_by_reason": reason_counts(self.skipped),
            "teacher_calls": self.teacher_calls,
            "cache_hits": self.cache_hits,
            "retries": sum(self.retries.values()),
            "retries_by_error": dict(sorted(self.retries.items())),
            "repaired": self.repaired,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "pii_scrubbed": dict(sorted(self.pii.items())),
            "cost_usd": round_money(paid),
            "saved_by_cache_usd": round_money(saved),
            # What labelling costs per 1k documents whether or not it was paid this run.
            "cost_per_1k_documents_usd": round_money(
                total / self.done * 1000 if total is not None and self.done else None
            ),
            "stopped": self.stopped,
        }


def reason_counts(records: list[dict[str, Any]]) -> dict[str, int]:
    return dict(sorted(Counter(r["reason"].split(":", 1)[0] for r in records).items()))


def round_money(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


# ---------------------------------------------------------------- requests and answers


def make_client(cfg: TeacherConfig) -> openai.AsyncOpenAI:
    # The key is read here and handed to the SDK only; it never enters config or logs.
    # Retries are ours (below), so the SDK's are off: we count them and honour the budget.
    api_key = os.environ.get(cfg.api_key_env) or "not-needed-for-local-teacher"
    return openai.AsyncOpenAI(
        base_url=cfg.base_url, api_key=api_key, timeout=cfg.timeout_s, max_retries=0
    )


def teacher_request(
    target: Target, messages: list[dict[str, Any]], tools: list[dict[str, Any]], cfg: TeacherConfig
) -> dict[str, Any]:
    """The exact chat request sent for one document; its hash is the cache key."""
    system = target.teacher_system_prompt
    if target.rationale:  # distilling step-by-step: the reasoning is kept as training signal
        system += " " + RATIONALE_INSTRUCTION
    request: dict[str, Any] = {
        "model": cfg.model,
        "messages": [{"role": "system", "content": system}] + messages,
        "temperature": cfg.temperature,
        "max_tokens": cfg.max_tokens,
    }
    if target.kind == "tool_call":
        request["tools"] = tools
        request["tool_choice"] = "required"
    else:  # structured output: the provider constrains the answer to the target's schema
        request["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": target.name, "schema": target.output_schema, "strict": True},
        }
    return request


def repair_request(request: dict[str, Any], message: dict[str, Any], problem: str) -> dict:
    """The same request plus the invalid answer and what is wrong with it, asked once more.

    The answer goes back as text, not as `tool_calls`: an assistant tool call must be
    followed by tool results, which there are none of, and every provider accepts text.
    """
    calls = [
        {"name": c["function"].get("name"), "arguments": c["function"].get("arguments")}
        for c in message.get("tool_calls") or []
        if isinstance(c.get("function"), dict)
    ]
    # Without the provider's random call ids, so the repair request (and its cache key)
    # is the same every time the same bad answer comes back.
    shown = json.dumps(calls) if calls else str(message.get("content"))
    note = f"That answer was invalid ({problem}). Answer again, correctly."
    return request | {
        "messages": request["messages"]
        + [{"role": "assistant", "content": shown}, {"role": "user", "content": note}]
    }


def cache_key(target: Target, request: dict[str, Any]) -> str:
    digest = content_hash({"prompt_version": target.prompt_version, "request": request})
    return f"{CACHE_PREFIX}/{request['model']}/{digest}.json"


def estimate_request_tokens(request: dict[str, Any]) -> int:
    """What a provider counts against tokens/minute before answering: prompt + max_tokens."""
    text = json.dumps(request["messages"]) + json.dumps(request.get("tools") or [])
    return len(text) // 4 + request.get("max_tokens", 0)


def parse_tool_calls(message: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The teacher message as `{"tool_calls": [...]}` with parsed arguments, or a reason."""
    calls = message.get("tool_calls") or []
    if not calls:
        return None, "no_tool_call: the teacher answered without calling a tool"
    parsed = []
    for call in calls:
        function = call.get("function") or {}
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except json.JSONDecodeError:
            return None, f"arguments_not_json: {function.get('name')!r}"
        parsed.append({"name": function.get("name"), "arguments": arguments})
    return {"tool_calls": parsed}, None


def parse_structured(message: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    try:
        return json.loads(message.get("content") or ""), None
    except json.JSONDecodeError:
        return None, "content_not_json: the answer is not a JSON document"


def check_answer(
    target: Target, tools: list[dict[str, Any]], message: dict[str, Any]
) -> tuple[dict[str, Any] | None, str | None]:
    """(output, None) for a valid answer; (None, reason) for one to repair or quarantine."""
    parse = parse_tool_calls if target.kind == "tool_call" else parse_structured
    output, problem = parse(message)
    if output is not None and (schema_problem := validate_answer(target, tools, output)):
        return None, f"schema_invalid: {schema_problem}"
    return output, problem


# ---------------------------------------------------------------- one run's machinery


class TeacherFailure(Exception):
    """The teacher could not answer this request, retries spent; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def retry_after_s(error: openai.APIError) -> float | None:
    """The provider's own wait, from `retry-after-ms` or `Retry-After` (seconds)."""
    response = getattr(error, "response", None)
    if response is None:
        return None
    for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = response.headers.get(header)
        if value is None:
            continue
        try:
            return float(value) * scale
        except ValueError:
            continue  # an HTTP date; rare, and backoff covers it
    return None


@dataclass
class Labeller:
    """What every document's labelling shares: clients, pacing, the books, the stop flag."""

    s3: Any
    bucket: str
    client: openai.AsyncOpenAI
    target: Target
    cfg: TeacherConfig
    result: LabelResult
    limiter: RateLimiter
    # Held around each call in flight: a slot of a limit shared with other runs (from the
    # orchestrator; the library never imports it). Not held while backing off.
    slot: Callable[[], AbstractAsyncContextManager[Any]] = nullcontext
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        estimate = estimate_request_tokens(request)
        for attempt in range(self.cfg.max_retries + 1):
            await self.limiter.acquire(estimate)
            try:
                async with self.slot():
                    answer = await call_teacher(self.client, request)
            except RETRYABLE as error:
                kind = type(error).__name__
                if attempt == self.cfg.max_retries:
                    reason = f"teacher_error: {kind} after {attempt + 1} attempts"
                    raise TeacherFailure(reason) from error
                self.result.retries[kind] += 1
                wait = backoff_delay(attempt, self.cfg.backoff_s, self.cfg.backoff_max_s, self.rng)
                if (provider_wait := retry_after_s(error)) is not None:
                    # Everyone waits the provider's time; the jitter on top keeps them from
                    # all coming back in the same instant and being throttled again.
                    self.limiter.pause(provider_wait)
                    wait += provider_wait
                await asyncio.sleep(wait)
            except openai.APIError as error:
                raise TeacherFailure(f"teacher_error: {type(error).__name__}") from error
            else:
                self.limiter.settle(estimate, answer["prompt_tokens"] + answer["completion_tokens"])
                return answer
        raise AssertionError("unreachable: the loop returns or raises")

    async def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """The cached answer if there is one, else a fresh (paid) one, cached first."""
        key = cache_key(self.target, request)
        cached = await asyncio.to_thread(get_json_if_exists, self.s3, self.bucket, key)
        if cached is not None:
            self.result.cache_hits += 1
            self.result.cached_prompt_tokens += cached["prompt_tokens"]
            self.result.cached_completion_tokens += cached["completion_tokens"]
            return cached | {"cached": True}
        answer = await self.call(request)
        # Paid for whether or not it turns out valid; cached so it is paid only once.
        self.result.teacher_calls += 1
        self.result.prompt_tokens += answer["prompt_tokens"]
        self.result.completion_tokens += answer["completion_tokens"]
        await asyncio.to_thread(put_json, self.s3, self.bucket, key, answer)
        return answer | {"cached": False}

    async def read_document(self, candidate: Candidate) -> tuple[dict | None, str | None]:
        try:
            body = await asyncio.to_thread(get_bytes, self.s3, self.bucket, candidate.key)
        except ClientError as error:
            return None, f"unreadable: {error.response['Error']['Code']}"
        try:
            document = json.loads(body)
        except ValueError:  # JSON or UTF-8 damage since the manifest was written
            return None, "changed_since_sampling"
        if content_hash(document) != candidate.sha256:
            return None, "changed_since_sampling"
        return document, None

    async def label(self, candidate: Candidate) -> None:
        base = {"id": candidate.id, "key": candidate.key, "sha256": candidate.sha256}
        document, problem = await self.read_document(candidate)
        if document is None:
            self.result.quarantined.append(base | {"reason": problem})
            return
        scrubbed = scrub_messages(document_messages(self.target, document), self.target.pii)
        self.result.pii.update(scrubbed.counts)
        tools = document_tools(self.target, document)
        request = teacher_request(self.target, scrubbed.messages, tools, self.cfg)
        try:
            answer = await self.answer(request)
            output, problem = check_answer(self.target, tools, answer["message"])
            repaired = False
            if problem and self.cfg.repair:
                answer = await self.answer(repair_request(request, answer["message"], problem))
                output, repair_problem = check_answer(self.target, tools, answer["message"])
                problem, repaired = repair_problem and f"{repair_problem} (after repair)", True
        except TeacherFailure as failure:
            self.result.quarantined.append(base | {"reason": failure.reason})
            self.count_failure()
            return
        if problem:
            self.result.quarantined.append(base | {"reason": problem})
            return
        self.result.repaired += repaired
        self.result.labelled.append(
            base
            | {
                "messages": scrubbed.messages,
                "tools": tools,
                "output": output,
                "rationale": answer["message"].get("content") if self.target.rationale else None,
                "teacher_model": answer["model"],
                "prompt_tokens": answer["prompt_tokens"],
                "completion_tokens": answer["completion_tokens"],
                "latency_ms": answer["latency_ms"],
                "cached": answer["cached"],
                "repaired": repaired,
            }
        )

    def count_failure(self) -> None:
        self.result.failures += 1
        if self.result.failures >= self.cfg.failure_budget and not self.result.stopped:
            self.result.stopped = "failure_budget_exhausted"
            log.error(
                "labelling stops: %d documents failed for good (budget %d)",
                self.result.failures,
                self.cfg.failure_budget,
            )


async def call_teacher(client: openai.AsyncOpenAI, request: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    response = await client.chat.completions.create(**request)
    latency_ms = (time.perf_counter() - started) * 1000
    usage = response.usage
    return {
        "message": response.choices[0].message.model_dump(exclude_none=True),
        "model": response.model,
        "prompt_tokens": usage.prompt_tokens if usage else 0,
        "completion_tokens": usage.completion_tokens if usage else 0,
        "latency_ms": round(latency_ms, 2),
    }


# ---------------------------------------------------------------- progress


class Progress:
    """A bar with rate, ETA and spend on a terminal; a log line every few seconds elsewhere."""

    def __init__(self, total: int, result: LabelResult, every_s: float) -> None:
        self.total, self.result, self.every_s = total, result, every_s
        self.started = self.last = time.monotonic()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="labelling", unit="doc", file=sys.stderr)

    def spend(self) -> str:
        cost = self.result.cost_usd()
        return "n/a" if cost is None else f"${cost:.4f}"

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(spend=self.spend(), cached=self.result.cache_hits, refresh=False)
            return
        now = time.monotonic()
        if now - self.last >= self.every_s or self.result.done == self.total:
            self.last = now
            rate = self.result.done / max(now - self.started, 1e-9)
            eta = (self.total - self.result.done) / rate if rate else float("inf")
            log.info(
                "labelling %d/%d (%.1f docs/s, ETA %.0fs, spend %s, %d from cache)",
                self.result.done,
                self.total,
                rate,
                eta,
                self.spend(),
                self.result.cache_hits,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------- the run


def install_stop_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> list[int]:
    """SIGTERM/SIGINT finish what is in flight instead of killing paid answers mid-air.

    Only the main thread may own signal handlers; elsewhere (a Prefect worker thread) the
    orchestrator's own cancellation applies and the cache still makes the rerun cheap.
    """
    if threading.current_thread() is not threading.main_thread():
        return []
    installed = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
        installed.append(signum)
    return installed


async def run_workers(labeller: Labeller, items: list[Candidate], stop: asyncio.Event) -> None:
    pending: Iterator[Candidate] = iter(items)
    progress = Progress(len(items), labeller.result, labeller.cfg.progress_every_s)

    async def worker() -> None:
        while not stop.is_set() and not labeller.result.stopped:
            candidate = next(pending, None)
            if candidate is None:
                return
            await labeller.label(candidate)
            progress.tick()

    try:
        await asyncio.gather(*(worker() for _ in range(labeller.cfg.concurrency)))
    finally:
        progress.close()
    if stop.is_set() and not labeller.result.stopped:
        labeller.result.stopped = "interrupted"
    for candidate in pending:  # never started: counted, not lost
        labeller.result.skipped.append(
            {"id": candidate.id, "key": candidate.key, "reason": labeller.result.stopped}
        )


SlotFactory = Callable[[], AbstractAsyncContextManager[Any]]


async def label_manifest_async(
    s3: Any, manifest: Manifest, target: Target, cfg: TeacherConfig, slot: SlotFactory = nullcontext
) -> LabelResult:
    result = LabelResult(price=cfg.prices.get(cfg.model))
    loop = asyncio.get_running_loop()
    # S3 calls run in threads; the default pool (cores + 4) would cap concurrency at 6.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=2 * cfg.concurrency + 4))
    stop = asyncio.Event()
    installed = install_stop_signals(loop, stop)
    limiter = RateLimiter(cfg.requests_per_minute, cfg.tokens_per_minute)
    try:
        async with make_client(cfg) as client:
            labeller = Labeller(
                s3, manifest.bucket, client, target, cfg, result, limiter, slot=slot
            )
            await run_workers(labeller, manifest.items, stop)
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
    # Completion order is arbitrary; sort so the labelled set is reproducible.
    for records in (result.labelled, result.quarantined, result.skipped):
        records.sort(key=lambda r: r["key"])
    return result


class LabellingStopped(RuntimeError):
    """The run stopped before every document was labelled; what was paid is cached."""


def label_manifest(
    s3: Any,
    manifest: Manifest,
    target: Target,
    cfg: TeacherConfig,
    slot: SlotFactory = nullcontext,
) -> LabelResult:
    """Label every sampled document; `slot` is entered around each teacher call."""
    result = asyncio.run(label_manifest_async(s3, manifest, target, cfg, slot))
    if result.done != len(manifest.items):
        raise RuntimeError(
            f"labelling lost documents: {len(manifest.items)} sampled, {result.done} accounted"
        )
    return result


def write_labels(s3: Any, bucket: str, prefix: str, result: LabelResult) -> None:
    """labelled / quarantined / skipped records under `prefix`, plus the counts."""
    put_jsonl(s3, bucket, f"{prefix}/labelled.jsonl", result.labelled)
    put_jsonl(s3, bucket, f"{prefix}/quarantine.jsonl", result.quarantined)
    put_jsonl(s3, bucket, f"{prefix}/skipped.jsonl", result.skipped)
    put_json(s3, bucket, f"{prefix}/label-counts.json", result.counts())


def raise_if_stopped(result: LabelResult) -> None:
    if result.stopped:
        c = result.counts()
        raise LabellingStopped(
            f"labelling stopped early ({result.stopped}): {c['labelled']} labelled, "
            f"{c['quarantined']} quarantined, {c['skipped']} skipped. Answers already paid "
            "for are cached: a rerun resumes without paying for them again."
        )
