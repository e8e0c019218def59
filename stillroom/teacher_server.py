"""A local OpenAI-compatible teacher for offline runs, tests and benchmarks.

Replay mode answers `/v1/chat/completions` from recorded outputs keyed by the request (see
`seeding.replay_key`), rendered as OpenAI `tool_calls`, so the labelling code runs exactly
as it would against a real provider. Fault injection makes it behave like one on a bad
day: added latency, a request-rate limit enforced with 429 + `Retry-After`, random 429s,
5xx errors, hung requests, malformed JSON arguments and schema-invalid answers.

The server keeps the books a provider would (`GET /stats`): requests by outcome, answers
delivered, tokens billed, and `repeats`, answers delivered twice for the very same request:
what a client with a working cache never pays for. An answer whose client hung up before
it was ready is counted as `abandoned`, not delivered.

    python -m stillroom.teacher_server --replay .stillroom/teacher/replay.jsonl --port 8765 \
        --fault latency_ms=200 --fault p_429=0.05
    python -m stillroom.teacher_server --local-model     # Qwen2.5-Coder-0.5B, ~10 s a request
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from stillroom.seeding import replay_key
from stillroom.storage import content_hash

ToolCalls = list[dict[str, Any]]


class Faults(BaseModel):
    """What goes wrong, and how often. Probabilities are per request, drawn independently."""

    model_config = ConfigDict(extra="forbid")
    latency_ms: float = Field(0.0, description="Added to every request before it is answered.")
    latency_jitter_ms: float = Field(0.0, description="Uniform extra latency, 0..this.")
    rate_limit_rps: float | None = Field(
        None, description="Requests/second the server accepts; more get 429 + Retry-After."
    )
    p_429: float = Field(0.0, description="Random 429 Too Many Requests, with Retry-After.")
    retry_after_s: float = Field(0.5, description="Retry-After sent with a random 429.")
    p_5xx: float = Field(0.0, description="Random 500/502/503 errors.")
    p_timeout: float = Field(0.0, description="Requests that hang for `hang_s` seconds.")
    hang_s: float = Field(30.0, description="How long a hung request hangs.")
    p_malformed: float = Field(0.0, description="Answers whose tool arguments are not JSON.")
    p_schema_invalid: float = Field(0.0, description="Answers calling a tool not on offer.")
    seed: int = Field(0, description="Seed of the fault draws.")


@dataclass
class BackendAnswer:
    calls: ToolCalls  # arguments: a dict (encoded here) or the model's own raw text
    content: str | None = None  # what the model said instead, when it called nothing
    prompt_tokens: int | None = None  # real counts where the backend has a tokenizer
    completion_tokens: int | None = None


class Backend(Protocol):
    """Where answers come from: recordings, or a local model (see `local_teacher`)."""

    def answer(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> BackendAnswer | None: ...


class ReplayBackend:
    def __init__(self, path: Path) -> None:
        self.recordings: dict[str, ToolCalls] = {}
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                self.recordings[record["key"]] = record["tool_calls"]

    def answer(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> BackendAnswer | None:
        calls = self.recordings.get(replay_key(original_turns(messages), tools))
        return None if calls is None else BackendAnswer(calls)


class LocalModelBackend:
    """A small instruct model answering for real (Qwen2.5-Coder-0.5B by default): slow on a
    CPU, but it reads the request, so it serves documents nobody recorded answers for."""

    def __init__(self, teacher: Any) -> None:
        self.teacher = teacher  # a local_teacher.LocalModelTeacher

    def answer(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> BackendAnswer | None:
        generated = self.teacher.generate(messages, tools)
        return BackendAnswer(
            calls=generated.calls,
            content=None if generated.calls else generated.text,
            prompt_tokens=generated.prompt_tokens,
            completion_tokens=generated.completion_tokens,
        )


def original_turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request as first sent: a repair follow-up appends the bad answer and a note."""
    for index, message in enumerate(messages):
        if message.get("role") == "assistant":
            return messages[:index]
    return messages


def estimate_tokens(text: str) -> int:
    """Usage needs a token count; ~4 characters a token is what providers' docs quote."""
    return max(1, len(text) // 4)


def wire_arguments(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def corrupt(calls: ToolCalls, fault: str) -> list[dict[str, Any]]:
    """Wire-format tool calls, damaged the way real model output gets damaged."""
    wire = [{"name": c["name"], "arguments": wire_arguments(c["arguments"])} for c in calls]
    if wire and fault == "malformed":  # cut off mid-object, as when a provider hits max_tokens
        wire[0]["arguments"] = wire[0]["arguments"][:-1]
    elif wire and fault == "schema_invalid":
        wire[0]["name"] = "not_an_offered_tool"
    return wire


def completion_body(
    model: str, prompt_text: str, wire_calls: list[dict[str, Any]], answer: BackendAnswer
) -> dict:
    tool_calls = [
        {
            "id": f"call_{uuid.uuid4().hex[:12]}",
            "type": "function",
            "function": {"name": c["name"], "arguments": c["arguments"]},
        }
        for c in wire_calls
    ]
    prompt_tokens = answer.prompt_tokens or estimate_tokens(prompt_text)
    completion_tokens = answer.completion_tokens or estimate_tokens(json.dumps(wire_calls))
    message = {"role": "assistant", "content": answer.content, "tool_calls": tool_calls or None}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if tool_calls else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def error_response(status: int, kind: str, message: str, retry_after_s: float | None = None):
    headers = {}
    if retry_after_s is not None:
        # Providers send whole seconds in Retry-After and milliseconds in retry-after-ms.
        headers["retry-after"] = str(max(1, round(retry_after_s)))
        headers["retry-after-ms"] = str(int(retry_after_s * 1000))
    body = {"error": {"message": message, "type": kind, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


class RateWindow:
    """Server-side request-rate limit: a token bucket holding one second of requests."""

    def __init__(self, rps: float) -> None:
        self.rps = rps
        self.tokens = max(1.0, rps)
        self.stamp = time.monotonic()

    def take(self) -> float:
        """0.0 if the request is within the limit, else seconds until it would be."""
        now = time.monotonic()
        self.tokens = min(max(1.0, self.rps), self.tokens + (now - self.stamp) * self.rps)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rps


class TeacherState:
    """Faults in force and the provider-side books; both reset through the admin API."""

    def __init__(self, faults: Faults) -> None:
        self.stats: Counter[str] = Counter()
        self.delivered: set[str] = set()
        self.seen: Counter[str] = Counter()  # times each exact request body has arrived
        self.first_at: float | None = None  # wall-clock arrival of the first and last request
        self.last_at: float | None = None
        self.set_faults(faults)

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults
        self.window = RateWindow(faults.rate_limit_rps) if faults.rate_limit_rps else None

    def reset(self) -> None:
        self.stats.clear()
        self.delivered.clear()
        self.seen.clear()
        self.first_at = self.last_at = None

    def arrived(self) -> None:
        self.stats["requests"] += 1
        self.last_at = time.time()
        self.first_at = self.first_at or self.last_at

    def rng_for(self, digest: str) -> random.Random:
        """Draws depend on the request and its attempt number, not on arrival order, so a
        run's faults are the same however concurrent requests interleave."""
        attempt = self.seen[digest]
        self.seen[digest] += 1
        return random.Random(f"{self.faults.seed}:{digest}:{attempt}")

    def draw(self, rng: random.Random) -> str | None:
        """At most one fault per request, so the configured rates are what is observed."""
        f, roll = self.faults, rng.random()
        for name, p in (
            ("rate_limited", f.p_429),
            ("server_error", f.p_5xx),
            ("timeout", f.p_timeout),
            ("malformed", f.p_malformed),
            ("schema_invalid", f.p_schema_invalid),
        ):
            if roll < p:
                return name
            roll -= p
        return None


def create_app(
    backend: Backend, model_name: str = "replay-teacher", faults: Faults | None = None
) -> FastAPI:
    state = TeacherState(faults or Faults())
    app = FastAPI(title="stillroom local teacher")

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model"}]}

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "backend": type(backend).__name__}

    @app.get("/stats")
    def get_stats() -> dict[str, float]:
        """Counters, plus the span of arrivals: the request rate a provider would see."""
        span = {"first_at": state.first_at, "last_at": state.last_at} if state.first_at else {}
        return dict(state.stats) | span

    @app.put("/admin/faults")
    def put_faults(new: Faults) -> dict[str, Any]:
        state.set_faults(new)
        return new.model_dump()

    @app.post("/admin/reset")
    def reset() -> dict[str, str]:
        state.reset()
        return {"status": "reset"}

    @app.post("/v1/chat/completions")
    async def chat_completions(raw: Request) -> Any:
        body = await raw.json()
        state.arrived()
        state.stats["in_flight"] += 1  # a hung request still counts until it is decided
        # The most requests open at once: what a provider's concurrency cap would see.
        state.stats["max_in_flight"] = max(state.stats["max_in_flight"], state.stats["in_flight"])
        try:
            return await answer_request(raw, body)
        finally:
            state.stats["in_flight"] -= 1

    async def answer_request(raw: Request, body: dict[str, Any]) -> Any:
        stats, faults = state.stats, state.faults
        if state.window and (wait_s := state.window.take()):
            stats["rate_limited"] += 1
            return error_response(429, "rate_limit_exceeded", "request rate limit", wait_s)
        digest = content_hash(body)
        rng = state.rng_for(digest)
        fault = state.draw(rng)
        if fault == "rate_limited":
            stats["rate_limited"] += 1
            return error_response(429, "rate_limit_exceeded", "slow down", faults.retry_after_s)
        delay_s = (faults.latency_ms + rng.random() * faults.latency_jitter_ms) / 1000
        if fault == "timeout":
            delay_s += faults.hang_s
        await asyncio.sleep(delay_s)
        if fault == "server_error":
            stats["server_error"] += 1
            status = rng.choice([500, 502, 503])
            return error_response(status, "server_error", "the teacher fell over")
        messages, tools = body.get("messages") or [], body.get("tools") or []
        answer = await asyncio.to_thread(backend.answer, messages, tools)
        if answer is None:
            stats["misses"] += 1
            return error_response(404, "not_found", "no recorded answer for this request")
        if await raw.is_disconnected():
            stats["abandoned"] += 1  # the client gave up (its timeout): nothing delivered
            return error_response(499, "client_closed", "client went away")
        outcome = fault if fault in ("malformed", "schema_invalid", "timeout") else "ok"
        stats[outcome] += 1
        prompt_text = json.dumps(messages) + json.dumps(tools)
        reply = completion_body(model_name, prompt_text, corrupt(answer.calls, outcome), answer)
        record_delivery(state, digest, reply["usage"])
        return reply

    return app


def record_delivery(state: TeacherState, digest: str, usage: dict[str, int]) -> None:
    if digest in state.delivered:
        state.stats["repeats"] += 1
    state.delivered.add(digest)
    state.stats["delivered"] += 1
    state.stats["billed_prompt_tokens"] += usage["prompt_tokens"]
    state.stats["billed_completion_tokens"] += usage["completion_tokens"]


def parse_faults(items: list[str]) -> Faults:
    """`--fault latency_ms=200 --fault p_429=0.1` -> Faults (values parsed as YAML)."""
    values = {}
    for item in items:
        name, _, raw = item.partition("=")
        values[name.strip()] = yaml.safe_load(raw)
    return Faults.model_validate(values)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--replay", type=Path, help="recordings JSONL")
    mode.add_argument(
        "--local-model",
        nargs="?",
        const="qwen2.5-coder-0.5b",
        help="serve a local model: an HF folder, or the packaged Qwen2.5-Coder-0.5B (default)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--model-name", help="model name in answers (default: by mode)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="local model only")
    parser.add_argument("--fault", action="append", default=[], help="e.g. p_5xx=0.1")
    args = parser.parse_args(argv)
    if args.replay:
        backend, name = ReplayBackend(args.replay), "replay-teacher"
    else:
        backend, name = local_model_backend(args.local_model, args.max_new_tokens)
    app = create_app(backend, args.model_name or name, parse_faults(args.fault))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def local_model_backend(model: str, max_new_tokens: int) -> tuple[LocalModelBackend, str]:
    from stillroom.env import apply_offline_env, state_dir
    from stillroom.local_teacher import QWEN_CODER_NAME, LocalModelTeacher, ensure_qwen_coder

    apply_offline_env()
    if model == QWEN_CODER_NAME:
        folder, name = ensure_qwen_coder(state_dir() / "models"), f"local-{QWEN_CODER_NAME}"
    else:
        folder, name = Path(model), f"local-{Path(model).name}"
    return LocalModelBackend(LocalModelTeacher(folder, max_new_tokens)), name


if __name__ == "__main__":
    main()
