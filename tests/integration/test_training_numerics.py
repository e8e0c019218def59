"""Numbers training depends on but never checks: QLoRA gradients, adapter round trips, packing.

Each test compares a fast or convenient path against a plain fp32 reference on the tiny model,
so a silent library regression shows up as a numeric mismatch rather than as a worse student.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from stillroom.models import load_causal_lm, load_tokenizer, resolve_base_model

Batch = dict[str, torch.Tensor]

TEXTS = (
    "The weather in Paris today is",
    'get_weather(city="London", unit="celsius")',
    "123 456 789 {} []",
)

# (prompt, completion) pairs of clearly different lengths, so a packed batch has boundaries at
# uneven offsets and a leak from a long example into a short one cannot hide.
PROMPT_COMPLETIONS = (
    ("Weather in Paris?", ' {"name": "get_weather", "arguments": {"city": "Paris"}}'),
    (
        "Book a flight from London to Tokyo tomorrow for two adults please, economy class",
        " book_flight(from='London', to='Tokyo', date='tomorrow')",
    ),
    ("Hi", " 42"),
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return resolve_base_model("tiny", tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    return load_tokenizer(model_dir, padding_side="right")


def lm_batch(tokenizer: PreTrainedTokenizerBase) -> Batch:
    """Right-padded batch with labels; pad positions are ignored by the loss."""
    batch = dict(tokenizer(list(TEXTS), return_tensors="pt", padding=True))
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return batch


def labelled(label: str) -> Callable[[str], str]:
    """assert_close's msg replaces its report; this keeps the report and says which tensor."""
    return lambda report: f"{label}: {report}"


def lora_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if "lora_" in name}


# --- 1. QLoRA gradients equal fp32 gradients through the dequantized weights ------------------


def dequantized_fp32_copy(qmodel: PreTrainedModel, model_dir: Path) -> PreTrainedModel:
    """A plain fp32 model computing exactly what the NF4 model should compute.

    Linear4bit weights become their dequantized values; everything else (norms, the tied
    embedding/head) is copied from the 4-bit model, so the only difference left is the kernel.
    """
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    reference = load_causal_lm(model_dir)
    reference_modules = dict(reference.named_modules())
    reference_params = dict(reference.named_parameters())
    quantized = 0
    with torch.no_grad():
        for name, module in qmodel.named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                weight = dequantize_4bit(module.weight.data, module.weight.quant_state)
                reference_modules[name].weight.copy_(weight)
                quantized += 1
        for name, param in qmodel.named_parameters():
            if not isinstance(param, bnb.nn.Params4bit):
                reference_params[name].copy_(param)
    # 2 layers x 7 projections: proves the comparison really runs through 4-bit kernels.
    assert quantized == 2 * 7
    return reference


def test_qlora_gradients_match_fp32_dequantized_copy_after_eval_pass(
    model_dir: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    bnb = pytest.importorskip("bitsandbytes")
    qmodel = load_causal_lm(model_dir, quantize_4bit=True)
    qmodel = prepare_model_for_kbit_training(qmodel, use_gradient_checkpointing=False)
    reference = dequantized_fp32_copy(qmodel, model_dir)

    # init_lora_weights=False makes B non-zero, so A gets a gradient too; dropout 0 keeps the
    # two forwards deterministic. The reference then takes the 4-bit model's LoRA values.
    config = LoraConfig(
        task_type="CAUSAL_LM",
        target_modules="all-linear",
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        init_lora_weights=False,
    )
    torch.manual_seed(0)
    qpeft = get_peft_model(qmodel, config)
    refpeft = get_peft_model(reference, config)
    qlora, reflora = lora_parameters(qpeft), lora_parameters(refpeft)
    assert qlora.keys() == reflora.keys() and len(qlora) == 2 * 7 * 2
    with torch.no_grad():
        for name, param in qlora.items():
            reflora[name].copy_(param)

    batch = lm_batch(tokenizer)
    # The eval pass: on avx512_bf16 CPUs this is where bitsandbytes would repack the weights.
    qpeft.eval()
    with torch.no_grad():
        qpeft(**batch)
    layers = [m for m in qpeft.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert not any(m.support_avx512bf16_for_cpu for m in layers)
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)

    qpeft.train()
    refpeft.train()
    qloss = qpeft(**batch).loss
    qloss.backward()
    refloss = refpeft(**batch).loss
    refloss.backward()

    # bitsandbytes' CPU gemm_4bit is dequantize + F.linear, the same ops as the reference, and
    # measured bit-identical here (max |diff| 0 for loss and every gradient). The tolerance only
    # leaves room for a future fused kernel's summation order (fp32, K <= 128: ~1e-6 relative);
    # the repacked path runs in bf16 (error ~4e-3 relative) and drops the input gradient.
    tolerance = {"rtol": 1e-5, "atol": 1e-7}
    torch.testing.assert_close(qloss, refloss, **tolerance)
    for name, param in qlora.items():
        assert param.grad is not None and param.grad.abs().max() > 0, name
        torch.testing.assert_close(param.grad, reflora[name].grad, **tolerance, msg=labelled(name))


# --- 2. adapter and merged-model round trips ---------------------------------------------------


@dataclass
class TrainedAdapter:
    adapter_dir: Path
    batch: Batch
    base_logits: torch.Tensor
    logits: torch.Tensor  # the in-memory trained PeftModel, eval mode


ALL_LINEAR = pytest.param("all-linear", id="all-linear")
# LoRA on lm_head of a tied model: the head's base weight IS embed_tokens.
TIED_HEAD = ("q_proj", "v_proj", "lm_head")


@pytest.fixture(scope="module")
def trained_adapter(
    request: pytest.FixtureRequest,
    model_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    tmp_path_factory: pytest.TempPathFactory,
) -> TrainedAdapter:
    """Two AdamW steps from the default B=0 init, saved as safetensors."""
    targets = request.param if isinstance(request.param, str) else list(request.param)
    batch = lm_batch(tokenizer)
    torch.manual_seed(0)
    base = load_causal_lm(model_dir).eval()
    with torch.no_grad():
        base_logits = base(**batch).logits
    # Dropout > 0 as in real configs: eval mode must switch it off for outputs to be comparable.
    config = LoraConfig(
        task_type="CAUSAL_LM", target_modules=targets, r=8, lora_alpha=16, lora_dropout=0.05
    )
    model = get_peft_model(base, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits
    adapter_dir = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(adapter_dir)
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    return TrainedAdapter(adapter_dir, batch, base_logits, logits)


def reload_adapter(model_dir: Path, adapter_dir: Path) -> PeftModel:
    return PeftModel.from_pretrained(load_causal_lm(model_dir), adapter_dir).eval()


def assert_head_tied(model: PreTrainedModel) -> None:
    head, embed = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert model.config.tie_word_embeddings
    assert head.data_ptr() == embed.data_ptr(), "lm_head no longer shares embed_tokens"


@pytest.mark.parametrize(
    "trained_adapter", [ALL_LINEAR, pytest.param(TIED_HEAD, id="tied-lm_head")], indirect=True
)
def test_reloaded_adapter_gives_identical_logits(
    trained_adapter: TrainedAdapter, model_dir: Path
) -> None:
    # Otherwise a reload that silently dropped the adapter weights would pass too.
    assert (trained_adapter.logits - trained_adapter.base_logits).abs().max() > 0.1
    reloaded = reload_adapter(model_dir, trained_adapter.adapter_dir)
    with torch.no_grad():
        logits = reloaded(**trained_adapter.batch).logits
    # Same weights, same ops, same order: anything but bit-identical means something changed.
    assert torch.equal(logits, trained_adapter.logits)


@pytest.mark.parametrize(
    "trained_adapter",
    [
        ALL_LINEAR,
        pytest.param(
            TIED_HEAD,
            id="tied-lm_head",
            marks=pytest.mark.xfail(
                strict=True,
                raises=AssertionError,
                reason="merging a LoRA on a tied lm_head writes W+BA into the shared tensor, so "
                "embed_tokens changes too (peft 0.21; ensure_weight_tying=True is worse: it "
                "merges twice). Keep lm_head out of target_modules on tied models.",
            ),
        ),
    ],
    indirect=True,
)
def test_merged_model_reload_keeps_tied_head_and_logits(
    trained_adapter: TrainedAdapter, model_dir: Path, tmp_path: Path
) -> None:
    merged = reload_adapter(model_dir, trained_adapter.adapter_dir).merge_and_unload()
    merged.save_pretrained(tmp_path, safe_serialization=True)
    reloaded = AutoModelForCausalLM.from_pretrained(
        tmp_path, use_safetensors=True, dtype=torch.float32
    ).eval()
    assert_head_tied(reloaded)
    with torch.no_grad():
        logits = reloaded(**trained_adapter.batch).logits
    # (W + s*B@A) x vs W x + s*B(A x) differ only by fp32 rounding: measured max |diff| 2.7e-7 on
    # logits of magnitude ~1. 1e-5 leaves ~40x margin; the tied-head bug moves logits by ~0.4.
    torch.testing.assert_close(logits, trained_adapter.logits, rtol=1e-5, atol=1e-5)


# --- 3. padding-free batches keep examples apart -----------------------------------------------


def sft_examples(tokenizer: PreTrainedTokenizerBase) -> list[dict[str, list[int]]]:
    """Tokenized like SFTTrainer's completion-only rows: prompt labels are -100."""
    examples = []
    for prompt, completion in PROMPT_COMPLETIONS:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        completion_ids = [*completion_ids, tokenizer.eos_token_id]
        examples.append(
            {
                "input_ids": prompt_ids + completion_ids,
                "labels": [-100] * len(prompt_ids) + completion_ids,
            }
        )
    return examples


def summed_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropies and how many tokens were scored (one sequence)."""
    targets = labels[1:]
    loss = F.cross_entropy(logits[:-1], targets, ignore_index=-100, reduction="sum")
    return loss, int((targets != -100).sum())


# transformers builds the block-diagonal mask from position_ids only when no cache exists
# (masking_utils: "only if the 2D attention mask is explicitly None, and we don't have cache").
# The tiny model and SmolLM2 have use_cache=true in config.json, so a forward that does not pass
# use_cache=False gets a DynamicCache even in train mode and attends across examples.
SFTTRAINER_USE_CACHE = False  # SFTTrainer.compute_loss sets inputs["use_cache"] = False
LEAKS_WITH_CACHE = pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="with use_cache=True transformers 5.25 skips find_packed_sequence_indices and the "
    "packed batch is one causal sequence: later examples attend to earlier ones",
)


@pytest.mark.parametrize(
    ("attn_implementation", "use_cache"),
    [
        pytest.param("sdpa", SFTTRAINER_USE_CACHE, id="sdpa"),
        pytest.param("eager", SFTTRAINER_USE_CACHE, id="eager"),
        pytest.param("sdpa", True, id="sdpa-use_cache", marks=LEAKS_WITH_CACHE),
        pytest.param("eager", True, id="eager-use_cache", marks=LEAKS_WITH_CACHE),
    ],
)
def test_padding_free_batch_matches_examples_run_alone(
    model_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    attn_implementation: str,
    use_cache: bool,
) -> None:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        use_safetensors=True,
        dtype=torch.float32,
        attn_implementation=attn_implementation,
    )
    model.eval()
    assert model.config._attn_implementation == attn_implementation
    examples = sft_examples(tokenizer)
    lengths = [len(example["input_ids"]) for example in examples]
    assert len(set(lengths)) == len(lengths)

    collator = DataCollatorForLanguageModeling(
        pad_token_id=tokenizer.pad_token_id, padding_free=True
    )
    packed = collator(examples)
    # The contract the mask relies on: one row, positions restarting at 0, no attention mask.
    assert "attention_mask" not in packed
    expected_positions = torch.cat([torch.arange(n) for n in lengths])
    assert torch.equal(packed["position_ids"][0], expected_positions)

    with torch.no_grad():
        # The whole collator output, as SFTTrainer hands it to the model (cu_seq_lens etc.).
        packed_logits = model(**packed, use_cache=use_cache).logits[0]
        alone_logits = [
            model(input_ids=torch.tensor([ex["input_ids"]]), use_cache=use_cache).logits[0]
            for ex in examples
        ]

    # Different GEMM shapes sum in a different order: measured max |diff| 2.4e-7 on logits of
    # magnitude ~1.3. 1e-5 leaves ~40x margin; a leak across examples measured 0.5.
    tolerance = {"rtol": 1e-5, "atol": 1e-5}
    packed_slices = packed_logits.split(lengths)
    for i, (in_pack, alone) in enumerate(zip(packed_slices, alone_logits, strict=True)):
        torch.testing.assert_close(in_pack, alone, **tolerance, msg=labelled(f"example {i}"))

    packed_loss, packed_count = summed_token_loss(packed_logits, packed["labels"][0])
    per_example = [
        summed_token_loss(logits, torch.tensor(ex["labels"]))
        for logits, ex in zip(alone_logits, examples, strict=True)
    ]
    # The first label of each example must not be scored against the previous example's end.
    assert packed_count == sum(count for _, count in per_example)
    torch.testing.assert_close(packed_loss, sum(loss for loss, _ in per_example), **tolerance)
