"""The tiny test models, the build cache, resolving names, folders and cached Hub ids, and
4-bit loading on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from stillroom import models
from stillroom.models import (
    CHATML_TEMPLATE,
    MARKER_FILE,
    WEIGHTS_FILE,
    disable_cpu_bf16_repack,
    load_causal_lm,
    load_tokenizer,
    qwen_template,
    resolve_base_model,
    set_special_tokens,
)

TOOL_CALL = json.dumps(
    {"name": "get_weather", "arguments": {"city": "São Paulo", "days": [1, 2.5], "ok": None}}
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return resolve_base_model("tiny", tmp_path_factory.mktemp("models"))


def bnb_cpu_4bit_problem() -> str | None:
    """Why bitsandbytes cannot quantize to 4 bit on this CPU, or None when it can."""
    try:
        import bitsandbytes.functional as bnbf

        bnbf.quantize_4bit(torch.randn(64, 64), blocksize=64, quant_type="nf4")
    except Exception as exc:  # any failure means "unusable here", whatever its type
        return f"bitsandbytes CPU 4-bit unusable: {type(exc).__name__}: {exc}"
    return None


def test_tiny_builds_a_loadable_folder(tiny: Path) -> None:
    assert {"config.json", WEIGHTS_FILE, "generation_config.json", MARKER_FILE} <= {
        p.name for p in tiny.iterdir()
    }
    model = AutoModelForCausalLM.from_pretrained(tiny)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    assert model.config.model_type == "llama"
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    marker = json.loads((tiny / MARKER_FILE).read_text())
    assert marker["model_sha256"] == models.file_sha256(tiny / WEIGHTS_FILE)


def test_tiny_special_tokens_match_smollm2_layout(tiny: Path) -> None:
    tokenizer = load_tokenizer(tiny)
    ids = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    assert ids == [0, 1, 2]
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    generation = json.loads((tiny / "generation_config.json").read_text())
    assert (generation["eos_token_id"], generation["pad_token_id"]) == (2, 0)


def test_chat_template_renders_chatml_with_generation_prompt(tiny: Path) -> None:
    tokenizer = load_tokenizer(tiny)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    bare = tokenizer.apply_chat_template(messages, tokenize=False)
    assert not bare.endswith("<|im_start|>assistant\n")


def test_json_tool_call_round_trips(tiny: Path) -> None:
    tokenizer = load_tokenizer(tiny)
    ids = tokenizer(TOOL_CALL, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == TOOL_CALL
    # Merges learned on the JSON-ish corpus: far fewer tokens than bytes.
    assert len(ids) < 0.6 * len(TOOL_CALL.encode())


def test_tiny_generates_with_left_padding(tiny: Path) -> None:
    tokenizer = load_tokenizer(tiny, padding_side="left")
    model = load_causal_lm(tiny)
    batch = tokenizer(["Hello", "get_weather(city='Paris')"], return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 3)


def test_second_call_returns_cached_folder(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mtime = (tiny / WEIGHTS_FILE).stat().st_mtime_ns

    def fail(*_: object) -> None:
        raise AssertionError("rebuilt a cached folder")

    monkeypatch.setattr(models, "build_tiny", fail)
    assert resolve_base_model("tiny", tiny.parent) == tiny
    assert (tiny / WEIGHTS_FILE).stat().st_mtime_ns == mtime


def test_build_is_deterministic(tiny: Path, tmp_path: Path) -> None:
    again = resolve_base_model("tiny", tmp_path)
    assert (again / "tokenizer.json").read_bytes() == (tiny / "tokenizer.json").read_bytes()
    assert models.file_sha256(again / WEIGHTS_FILE) == models.file_sha256(tiny / WEIGHTS_FILE)


def test_custom_corpus_gets_its_own_folder(tiny: Path) -> None:
    corpus = [f'{{"name": "lookup", "arguments": {{"id": {i}}}}}' for i in range(200)]
    custom = resolve_base_model("tiny", tiny.parent, corpus=corpus)
    assert custom != tiny
    assert custom.name.startswith("tiny-")
    assert (
        load_tokenizer(custom).decode(load_tokenizer(custom)(corpus[7])["input_ids"]) == corpus[7]
    )


def test_incomplete_folder_is_rebuilt(tmp_path: Path) -> None:
    half = tmp_path / "tiny"
    half.mkdir()
    (half / "config.json").write_text("{}")  # what a crash mid-build would leave, minus marker
    folder = resolve_base_model("tiny", tmp_path)
    assert folder == half.resolve()
    assert (folder / MARKER_FILE).is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]  # no staging or trash left


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(out: Path, *_: object) -> None:
        (out / WEIGHTS_FILE).write_bytes(b"half")
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(models, "build_tiny", crash)
    with pytest.raises(RuntimeError, match="mid-build"):
        resolve_base_model("tiny", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_is_accepted(tiny: Path) -> None:
    assert resolve_base_model(str(tiny), Path("unused")) == tiny


def test_folder_without_safetensors_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no \*\.safetensors.*pytorch_model\.bin"):
        resolve_base_model(str(tmp_path), tmp_path)


def test_folder_without_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / WEIGHTS_FILE).write_bytes(b"")
    with pytest.raises(ValueError, match="config.json"):
        resolve_base_model(str(tmp_path), tmp_path)


def test_unknown_name_is_refused_naming_the_accepted_forms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    for name in ("llama-70b", str(tmp_path / "missing")):
        with pytest.raises(ValueError, match="unknown base model") as error:
            resolve_base_model(name, tmp_path)
        message = str(error.value)
        assert "packaged name" in message and "qwen2.5-coder-0.5b" in message
        assert "Hugging Face model id already in the local cache" in message
        assert str(tmp_path / "hub") in message
        assert "local Hugging Face model folder" in message


# --- tiny-tools: the tools-template family ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny_tools(tiny: Path) -> Path:
    return resolve_base_model("tiny-tools", tiny.parent)


def test_tiny_tools_has_its_own_folder_and_qwens_template(tiny: Path, tiny_tools: Path) -> None:
    assert tiny_tools.name == "tiny-tools" and tiny_tools != tiny
    assert json.loads((tiny_tools / MARKER_FILE).read_text())["name"] == "tiny-tools"
    tokenizer = load_tokenizer(tiny_tools)
    assert tokenizer.chat_template == qwen_template()
    assert "<tool_call>" in tokenizer.chat_template and "tools" in tokenizer.chat_template
    assert load_tokenizer(tiny).chat_template == CHATML_TEMPLATE  # the plain one is untouched


def test_tiny_tools_keeps_the_chatml_ids_and_single_tool_call_tokens(tiny_tools: Path) -> None:
    tokenizer = load_tokenizer(tiny_tools)
    ids = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    assert ids == [0, 1, 2]
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    text = '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert encoded[0] == tokenizer.convert_tokens_to_ids("<tool_call>")
    # Like Qwen's, they are not special: evaluation decodes with skip_special_tokens.
    assert tokenizer.decode(encoded, skip_special_tokens=True) == text
    model = load_causal_lm(tiny_tools)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.max_position_embeddings == tokenizer.model_max_length == 4096


def test_tiny_tools_custom_corpus_gets_its_own_folder(tiny: Path, tiny_tools: Path) -> None:
    corpus = [f'{{"name": "lookup", "arguments": {{"id": {i}}}}}' for i in range(200)]
    custom = resolve_base_model("tiny-tools", tiny.parent, corpus=corpus)
    plain = resolve_base_model("tiny", tiny.parent, corpus=corpus)
    assert custom.name.startswith("tiny-tools-") and plain.name.startswith("tiny-")
    assert len({custom, plain, tiny, tiny_tools}) == 4


# --- special tokens and templates ------------------------------------------------------------


def test_set_special_tokens_keeps_the_tokenizers_own_template(tiny_tools: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_tools)
    tokenizer = load_tokenizer(tiny_tools)
    set_special_tokens(model, tokenizer)
    assert tokenizer.chat_template == qwen_template()
    set_special_tokens(model, tokenizer, CHATML_TEMPLATE)
    assert tokenizer.chat_template == CHATML_TEMPLATE
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        set_special_tokens(model, tokenizer)


def test_packaged_qwen_name_is_the_local_teachers_converted_folder(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[Path] = []

    def converted(models_dir: Path) -> Path:
        asked.append(models_dir)
        return tiny

    monkeypatch.setattr(models, "ensure_qwen_coder", converted)
    assert resolve_base_model("qwen2.5-coder-0.5b", tmp_path) == tiny
    assert asked == [tmp_path]


# --- Hugging Face ids in the local cache -----------------------------------------------------


def fake_hub_snapshot(cache: Path, repo_id: str, source: Path, files: list[str]) -> Path:
    """The hub cache layout: models--org--name/{refs/main, snapshots/<commit>/...}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name in files:
        (snapshot / name).write_bytes((source / name).read_bytes())
    return snapshot


HUB_FILES = [
    "config.json",
    "generation_config.json",
    WEIGHTS_FILE,
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
]


def test_cached_hub_id_resolves_offline_to_its_snapshot(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hub"
    snapshot = fake_hub_snapshot(cache, "someorg/tiny-chat", tiny, HUB_FILES)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = resolve_base_model("someorg/tiny-chat", tmp_path / "models")
    assert folder == snapshot.resolve()
    assert load_tokenizer(folder).chat_template == CHATML_TEMPLATE
    assert not (tmp_path / "models").exists()  # nothing built or copied


def test_absent_hub_id_is_refused_clearly(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hub"
    fake_hub_snapshot(cache, "someorg/tiny-chat", tiny, HUB_FILES)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    with pytest.raises(ValueError, match=r"unknown base model 'someorg/other'.*local cache"):
        resolve_base_model("someorg/other", tmp_path)


def test_pickle_only_hub_snapshot_is_refused(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hub"
    snapshot = fake_hub_snapshot(cache, "someorg/old-model", tiny, ["config.json"])
    (snapshot / "pytorch_model.bin").write_bytes(b"")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    with pytest.raises(ValueError, match=r"no \*\.safetensors.*pickle checkpoints are refused"):
        resolve_base_model("someorg/old-model", tmp_path)


def test_full_precision_load_on_cpu(tiny: Path) -> None:
    model = load_causal_lm(tiny)
    assert model.dtype == torch.float32
    assert model.device.type == "cpu"


@pytest.mark.skipif(bnb_cpu_4bit_problem() is not None, reason=str(bnb_cpu_4bit_problem()))
def test_4bit_load_on_cpu(tiny: Path) -> None:
    import bitsandbytes as bnb

    model = load_causal_lm(tiny, quantize_4bit=True)
    linears = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linears) == 7 * model.config.num_hidden_layers  # q k v o gate up down
    assert not any(m.support_avx512bf16_for_cpu for m in linears)
    assert disable_cpu_bf16_repack(model) == len(linears)

    batch = load_tokenizer(tiny)(["the weather in Paris"], return_tensors="pt")
    with torch.no_grad():
        full = load_causal_lm(tiny)(**batch).logits
        quantized = model(**batch).logits
    # NF4 error on a random-init model is small against logits of order 1.
    assert (quantized - full).abs().max() < 0.25
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    assert model.model.embed_tokens.weight.grad is not None


@pytest.mark.skipif(bnb_cpu_4bit_problem() is not None, reason=str(bnb_cpu_4bit_problem()))
def test_disable_cpu_bf16_repack_unpacks_repacked_weights() -> None:
    # The repack itself only runs on avx512_bf16 CPUs, so it is applied by hand here.
    import bitsandbytes as bnb
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4").to("cpu")
    x = torch.randn(3, 64)
    before = layer(x)
    weight = layer.weight
    weight.data, weight.quant_state = _convert_weight_packed_for_cpu(
        weight.data, weight.quant_state
    )

    assert disable_cpu_bf16_repack(torch.nn.Sequential(layer)) == 1
    assert not layer.support_avx512bf16_for_cpu
    assert not layer.weight.quant_state.packing_format_for_cpu
    # Not bit-identical: the repack rounded absmax to bf16.
    torch.testing.assert_close(layer(x), before, atol=1e-2, rtol=1e-2)
