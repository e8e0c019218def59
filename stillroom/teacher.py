"""Labelling: ask the teacher (any OpenAI-compatible API) for each sampled document.

Every sampled document ends as exactly one labelled record or one quarantined record with
a reason, so `sampled = labelled + quarantined` holds by construction. Answers are cached
in S3 under a content-addressed key (teacher model, prompt version, request, sampling
params): a rerun, or a run resumed after a crash, never pays twice for the same answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import openai
from botocore.exceptions import ClientError

from stillroom.config import TeacherConfig
from stillroom.sampling import Candidate, Manifest
from stillroom.storage import content_hash, get_bytes, get_json_if_exists, put_json
from stillroom.targets import Target, document_messages, document_tools, validate_answer

CACHE_PREFIX = "teacher-cache"


@dataclass
class LabelResult:
    labelled: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    teacher_calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def counts(self) -> dict[str, Any]:
        reasons: dict[str, int] = {}
        for record in self.quarantined:
            kind = record["reason"].split(":", 1)[0]
            reasons[kind] = reasons.get(kind, 0) + 1
        return {
            "labelled": len(self.labelled),
            "quarantined": len(self.quarantined),
            "quarantined_by_reason": dict(sorted(reasons.items())),
            "teacher_calls": self.teacher_calls,
            "cache_hits": self.cache_hits,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


def make_client(cfg: TeacherConfig) -> openai.AsyncOpenAI:
    # The key is read here and handed to the SDK only; it never enters config or logs.
    api_key = os.environ.get(cfg.api_key_env) or "not-needed-for-local-teacher"
    return openai.AsyncOpenAI(
        base_url=cfg.base_url, api_key=api_key, timeout=cfg.timeout_s, max_retries=cfg.max_retries
    )


def teacher_request(target: Target, document: dict[str, Any], cfg: TeacherConfig) -> dict[str, Any]:
    """The exact chat request sent for one document; its hash is the cache key."""
    request: dict[str, Any] = {
        "model": cfg.model,
        "messages": [{"role": "system", "content": target.teacher_system_prompt}]
        + document_messages(target, document),
        "temperature": cfg.temperature,
    }
    if target.kind == "tool_call":
        request["tools"] = document_tools(target, document)
        request["tool_choice"] = "required"
    return request


def cache_key(target: Target, request: dict[str, Any]) -> str:
    digest = content_hash({"prompt_version": target.prompt_version, "request": request})
    return f"{CACHE_PREFIX}/{request['model']}/{digest}.json"


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


async def answer_for(
    s3: Any,
    bucket: str,
    client: openai.AsyncOpenAI,
    request: dict[str, Any],
    key: str,
    result: LabelResult,
) -> tuple[dict[str, Any], bool]:
    """The cached answer if there is one, else a fresh (paid) one, cached before returning."""
    cached = await asyncio.to_thread(get_json_if_exists, s3, bucket, key)
    if cached is not None:
        result.cache_hits += 1
        return cached, True
    answer = await call_teacher(client, request)
    result.teacher_calls += 1
    await asyncio.to_thread(put_json, s3, bucket, key, answer)
    return answer, False


async def label_one(
    s3: Any,
    bucket: str,
    client: openai.AsyncOpenAI,
    target: Target,
    cfg: TeacherConfig,
    candidate: Candidate,
    result: LabelResult,
) -> None:
    base = {"id": candidate.id, "key": candidate.key, "sha256": candidate.sha256}
    try:
        document = json.loads(await asyncio.to_thread(get_bytes, s3, bucket, candidate.key))
    except ClientError as error:
        result.quarantined.append(
            base | {"reason": f"unreadable: {error.response['Error']['Code']}"}
        )
        return
    except ValueError:  # JSON or UTF-8 damage since the manifest was written
        document = None
    if document is None or content_hash(document) != candidate.sha256:
        result.quarantined.append(base | {"reason": "changed_since_sampling"})
        return
    request = teacher_request(target, document, cfg)
    try:
        answer, cached = await answer_for(
            s3, bucket, client, request, cache_key(target, request), result
        )
    except openai.APIError as error:
        result.quarantined.append(base | {"reason": f"teacher_error: {type(error).__name__}"})
        return
    if not cached:  # paid for whether or not the answer turns out valid
        result.prompt_tokens += answer["prompt_tokens"]
        result.completion_tokens += answer["completion_tokens"]
    output, problem = parse_tool_calls(answer["message"])
    tools = document_tools(target, document)
    if output is not None and (schema_problem := validate_answer(target, tools, output)):
        problem = f"schema_invalid: {schema_problem}"
    if problem:
        result.quarantined.append(base | {"reason": problem})
        return
    result.labelled.append(
        base
        | {
            "messages": document_messages(target, document),
            "tools": tools,
            "output": output,
            "teacher_model": answer["model"],
            "prompt_tokens": answer["prompt_tokens"],
            "completion_tokens": answer["completion_tokens"],
            "latency_ms": answer["latency_ms"],
            "cached": cached,
        }
    )


async def label_manifest_async(
    s3: Any, manifest: Manifest, target: Target, cfg: TeacherConfig
) -> LabelResult:
    result = LabelResult()
    gate = asyncio.Semaphore(cfg.concurrency)
    async with make_client(cfg) as client:

        async def bounded(candidate: Candidate) -> None:
            async with gate:
                await label_one(s3, manifest.bucket, client, target, cfg, candidate, result)

        await asyncio.gather(*(bounded(c) for c in manifest.items))
    # Completion order is arbitrary; sort so the labelled set is reproducible.
    result.labelled.sort(key=lambda r: r["key"])
    result.quarantined.sort(key=lambda r: r["key"])
    return result


def label_manifest(s3: Any, manifest: Manifest, target: Target, cfg: TeacherConfig) -> LabelResult:
    result = asyncio.run(label_manifest_async(s3, manifest, target, cfg))
    if len(result.labelled) + len(result.quarantined) != len(manifest.items):
        raise RuntimeError("labelling lost documents: counts do not reconcile")
    return result
