"""A local OpenAI-compatible teacher for offline runs and tests.

Replay mode answers `/v1/chat/completions` from recorded outputs keyed by the request (see
`seeding.replay_key`), rendered as OpenAI `tool_calls`, so the labelling code runs exactly
as it would against a real provider. It counts the requests it serves (`GET /stats`), which
is how tests prove a rerun paid nothing twice.

    python -m stillroom.teacher_server --replay .stillroom/teacher/replay.jsonl --port 8765
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict

from stillroom.seeding import replay_key


class ChatRequest(BaseModel):
    # Providers accept many optional fields (tool_choice, temperature, ...); replay ignores them.
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None


def load_recordings(path: Path) -> dict[str, list[dict[str, Any]]]:
    recordings = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            recordings[record["key"]] = record["tool_calls"]
    return recordings


def estimate_tokens(text: str) -> int:
    """Usage needs a token count; ~4 characters a token is what providers' docs quote."""
    return max(1, len(text) // 4)


def completion_body(
    model: str, request: ChatRequest, calls: list[dict[str, Any]]
) -> dict[str, Any]:
    tool_calls = [
        {
            "id": f"call_{uuid.uuid4().hex[:12]}",
            "type": "function",
            "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])},
        }
        for c in calls
    ]
    prompt_text = json.dumps(request.messages) + json.dumps(request.tools or [])
    completion_tokens = estimate_tokens(json.dumps(calls))
    prompt_tokens = estimate_tokens(prompt_text)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": tool_calls},
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def create_app(replay_path: Path, model_name: str = "replay-teacher") -> FastAPI:
    recordings = load_recordings(replay_path)
    stats: Counter[str] = Counter()
    app = FastAPI(title="stillroom local teacher")

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model"}]}

    @app.get("/stats")
    def get_stats() -> dict[str, int]:
        return dict(stats)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "recordings": len(recordings)}

    @app.post("/v1/chat/completions")
    def chat_completions(request: ChatRequest) -> dict[str, Any]:
        stats["requests"] += 1
        calls = recordings.get(replay_key(request.messages, request.tools or []))
        if calls is None:
            stats["misses"] += 1
            raise HTTPException(404, detail="no recorded answer for this request")
        return completion_body(model_name, request, calls)

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replay", type=Path, required=True, help="recordings JSONL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--model-name", default="replay-teacher")
    args = parser.parse_args(argv)
    app = create_app(args.replay, args.model_name)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
