"""The LLMs the serving planner sizes: a few presets, and any model a Hugging Face `config.json` describes (a file,
a model folder such as a Hub cache snapshot, or a Hub model id), so that a model outside the presets is planned from
its own shape rather than from the nearest preset's.

Parameters come from the `.safetensors` files' headers beside the config where there are some (exact; only the
headers are read, never the weights), or for a Hub id online from the Hub's reading of those headers, else from the
config's shape by the layer rule of the families listed in ESTIMATED_FAMILIES (an estimate, within a fraction of a
percent of the published counts), else the config is refused saying why. A Hub id's config.json comes from the Hub's
local cache, and from the Hub only when it is not there and the machine is online. Light to import (no torch).
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.core.errors import InputError
from engine.core.json_text import parse_json


class LlmConfigError(InputError):
    """A config.json that cannot be planned; the message says what was wrong and what is accepted."""


@dataclass(frozen=True)
class LlmSpec:
    key: str
    name: str  # the Hub id ("" where a config.json does not say it)
    parameters: float
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    max_positions: int | None  # None: no position table (ALiBi: BLOOM), the config sets no context
    tied_embeddings: bool = False
    parameters_basis: str = "the model card's count"
    # a checkpoint quantized ahead of time (its config's quantization_config): the --quantize TGI loads it with
    checkpoint_quantize: str | None = None
    # config.json's model_type, the outer one of a multimodal config, as TGI's get_model picks its class by it
    # ("" where not said)
    model_type: str = ""
    # config.json's own alibi key is true (Falcon's ALiBi variants, such as tiiuae/falcon-rw-1b): TGI's get_model reads
    # it to keep such a Falcon off its flash class (BLOOM's ALiBi, and MPT's in attn_config, set no such key)
    alibi: bool = False
    # parameters TGI's class for the model type reads as bare tensors past its weight loader: they stay 16-bit under
    # any --quantize its loader makes at load (MPT's fused Wqkv, phi-msft's MLP: _past_loader_parameters)
    past_loader_parameters: int = 0

    @property
    def embedding_parameters(self) -> int:
        """Input embedding plus the output head: these stay in fp16 when the rest is quantized."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


_PRESETS = (
    LlmSpec("tinyllama-1.1b", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", 1.10e9, 22, 2048, 32, 4, 64, 32000, 2048,
            model_type="llama"),
    LlmSpec("phi-2", "microsoft/phi-2", 2.78e9, 32, 2560, 32, 32, 80, 51200, 2048, model_type="phi"),
    LlmSpec("gemma-2b", "google/gemma-2b", 2.51e9, 18, 2048, 8, 1, 256, 256000, 8192, tied_embeddings=True,
            model_type="gemma"),
    LlmSpec("mistral-7b", "mistralai/Mistral-7B-v0.1", 7.24e9, 32, 4096, 32, 8, 128, 32000, 32768,
            model_type="mistral"),
    LlmSpec("llama-2-7b", "meta-llama/Llama-2-7b-hf", 6.74e9, 32, 4096, 32, 32, 128, 32000, 4096, model_type="llama"),
    LlmSpec("llama-2-13b", "meta-llama/Llama-2-13b-hf", 13.0e9, 40, 5120, 40, 40, 128, 32000, 4096,
            model_type="llama"),
)  # fmt: skip
LLMS: dict[str, LlmSpec] = {s.key: s for s in _PRESETS}

CONFIG_NAME = "config.json"
MAX_CONFIG_BYTES = 4 * 2**20  # a model's config.json is a few KiB
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on a header
# Decoder families whose parameters follow from the config: a gated MLP of three matrices (gate, up, down), RMS norms.
# Per family: which attention projections carry a bias (None: the config's attention_bias says), the norms per
# layer, a norm on each head's queries and keys, and whether input and output embeddings are shared when the
# config does not say (transformers' defaults for the family).
ESTIMATED_FAMILIES: dict[str, tuple[str | None, int, bool, bool]] = {
    "llama": (None, 2, False, False),
    "mistral": ("", 2, False, False),
    "mixtral": ("", 2, False, False),
    "qwen2": ("qkv", 2, False, False),
    "qwen3": (None, 2, True, False),
    "gemma": (None, 2, False, True),
    "gemma2": (None, 4, False, True),
    "gemma3_text": (None, 4, True, True),
    "phi3": ("", 2, False, False),
    "granite": (None, 2, False, False),
}
# TGI's --quantize for a checkpoint quantized ahead of time, by its quantization_config's method; these load at
# the sizes the planner's QUANT_BYTES_PER_PARAM gives (4-bit AWQ/GPTQ in groups, FP8 per row)
CHECKPOINT_QUANTIZE = {"awq": "awq", "gptq": "gptq", "fp8": "fp8"}


def is_hub_id(text: str) -> bool:
    """OWNER/NAME as the Hub spells a model's repository (not a preset's name, not a path)."""
    return bool(_HUB_ID.fullmatch(text)) and ".." not in text


_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def hub_spec(repo: str) -> LlmSpec:
    """The LlmSpec of a Hub model: its config.json from the Hub's local cache (or the Hub, online); its parameters
    from the cached .safetensors headers, else the Hub's count of them (online), else estimated."""
    from engine.core.hub import fetch_file

    file = fetch_file(repo, CONFIG_NAME, instead=f"the model's {CONFIG_NAME} in place of its id")
    hub_count = None if any(file.parent.glob("*.safetensors")) else _hub_parameters(repo)
    return spec_from_config(file, name=repo, hub_count=hub_count)


def _hub_parameters(repo: str) -> tuple[int, bool] | None:
    """(parameters, tied embeddings) as the Hub counts them from the repository's .safetensors headers; None offline,
    or where the Hub cannot say (no .safetensors files, unreachable, gated)."""
    from engine.core.hub import hub_offline

    if hub_offline():
        return None
    try:
        from huggingface_hub import HfApi

        metadata = HfApi().get_safetensors_metadata(repo)
    except Exception:  # any failure leaves the estimate, which the plan says it is
        return None
    return sum(metadata.parameter_count.values()), not _has_output_head(metadata.weight_map)


def spec_from_config(path: str | Path, name: str | None = None, hub_count: tuple[int, bool] | None = None) -> LlmSpec:
    """The LlmSpec of the model a Hugging Face config.json describes: `path` is the file or a folder holding it;
    `name` its Hub id where known, `hub_count` the Hub's (parameters, tied embeddings) where it gave them."""
    file = _config_file(Path(path))
    config = _read_config(file)
    _refuse_speculator(config, file)
    nested = _text_model(config)
    family = str(nested.get("model_type") or config.get("model_type") or "")
    _refuse_encoder_decoder(nested, family, file)
    shape = _standard_names(nested, family)
    names = ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")
    layers, hidden, heads, vocab = (_whole(shape, key, file.name, alias=_alias(family, key)) for key in names)
    kv_heads = _kv_heads(shape, family, heads, file.name)
    head_dim = _head_dim(shape, hidden, heads, file.name)
    if heads % kv_heads:
        raise LlmConfigError(f"{file.name}: {heads} attention heads do not share out over {kv_heads} key/value heads")
    positions = _max_positions(shape, family, file.name)
    past_loader = _past_loader_parameters(shape, family, layers, hidden, file.name)
    quantize = _checkpoint_quantize(config, file)
    counted = None if quantize else _counted_parameters(file.parent)
    if counted is not None:
        (parameters, tied), basis = counted, "counted from the .safetensors headers beside config.json"
    elif hub_count is not None and not quantize:
        (parameters, tied), basis = hub_count, "counted by the Hub from its .safetensors headers"
    else:
        if nested is not config:  # the language model's shape alone leaves the vision tower and projector uncounted
            raise LlmConfigError(
                f"{file.name} describes a multimodal model: the parameters outside its language model cannot be "
                "estimated from the config; give its Hub id while online, or on the command line the folder holding "
                "the config and the model's .safetensors files (only their headers are read)"
            )
        parameters, tied = _estimated_parameters(shape, family, vocab, file, quantize)
        basis = f"estimated from config.json's shape ({family} layers)"
    return LlmSpec(
        key=name or file.name, name=name or _model_id(config, file), parameters=float(parameters), layers=layers,
        hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=head_dim, vocab=vocab, max_positions=positions,
        tied_embeddings=tied, parameters_basis=basis, checkpoint_quantize=quantize,
        model_type=str(config.get("model_type") or ""), alibi=bool(config.get("alibi", False)),
        past_loader_parameters=past_loader,
    )  # fmt: skip


def _config_file(path: Path) -> Path:
    file = path / CONFIG_NAME if path.is_dir() else path
    if not file.is_file():
        where = f"no {CONFIG_NAME} in {path.name}/" if path.is_dir() else f"{path.name} not found"
        raise LlmConfigError(f"{where}: give a model's {CONFIG_NAME} (Hugging Face layout) or the folder holding it")
    return file


def _read_config(file: Path) -> dict[str, Any]:
    if file.stat().st_size > MAX_CONFIG_BYTES:
        raise LlmConfigError(f"{file.name} is {file.stat().st_size:,} bytes: a model's {CONFIG_NAME} is a few KiB")
    try:
        text = file.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LlmConfigError(f"{file.name} is not text: give a model's {CONFIG_NAME}") from None
    try:
        config = parse_json(text, file.name)
    except InputError as exc:  # the parser's complaint alone did not say what is taken
        raise LlmConfigError(f"{exc}; give a model's {CONFIG_NAME}") from None
    if not isinstance(config, dict):
        raise LlmConfigError(f"{file.name} is not a JSON object: give a model's {CONFIG_NAME}")
    return config


def _refuse_speculator(config: dict[str, Any], file: Path) -> None:
    """A Medusa or MLP speculator's config describes heads, not a model: TGI's get_model serves the base model it
    names (base_model_name_or_path) and adds the heads, which this planner does not size (their weights, a few
    hundred million parameters for a 7B base, come on top of the base model's)."""
    if "medusa_num_heads" in config:
        kind, heads = "a Medusa speculator", config["medusa_num_heads"]
    elif config.get("model_type") == "mlp_speculator":
        kind, heads = "an MLP speculator", config.get("n_predict")
    else:
        return
    base = config.get("base_model_name_or_path")
    base_words = f" for {base}" if isinstance(base, str) and base else ""
    heads_words = f" ({heads} heads)" if isinstance(heads, int) and not isinstance(heads, bool) else ""
    raise LlmConfigError(
        f"{file.name} describes {kind}{heads_words}{base_words}, not a model: TGI serves its base model with the "
        "heads added; plan the base model (its config.json or Hub id) and leave room for the heads' weights, "
        "which the planner does not size"
    )


def _text_model(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's part: a multimodal config (LLaVA, Gemma 3) nests it as text_config."""
    nested = config.get("text_config")
    if "num_hidden_layers" not in config and isinstance(nested, dict):
        return nested
    return config


# Families whose config names the shape otherwise (their config class's attribute_map in transformers 5.x, or for
# the remote-code types TGI's own config class): {the Llama-style key read here: the family's key}. As transformers
# reads them, a Llama-style key written in the config wins over the family's (attribute_map redirects it there).
# MPT's max_seq_len is not in transformers' map; TGI's launcher reads it as the context (launcher/src/main.rs).
_GPT2_NAMES = {
    "num_hidden_layers": "n_layer", "hidden_size": "n_embd", "num_attention_heads": "n_head",
    "max_position_embeddings": "n_positions",
}  # fmt: skip
_FALCON_NAMES = {"num_hidden_layers": "n_layer", "num_attention_heads": "n_head"}  # TGI's RWConfig
FAMILY_NAMES: dict[str, dict[str, str]] = {
    "gpt2": _GPT2_NAMES,
    "gpt_bigcode": _GPT2_NAMES,
    "gptj": _GPT2_NAMES,
    "phi-msft": _GPT2_NAMES,  # TGI's PhiConfig (custom_modeling/phi_modeling.py) reads these
    "bloom": {"num_hidden_layers": "n_layer", "num_attention_heads": "n_head"},
    "mpt": {
        "num_hidden_layers": "n_layers",
        "hidden_size": "d_model",
        "num_attention_heads": "n_heads",
        "max_position_embeddings": "max_seq_len",
    },
    "falcon": _FALCON_NAMES,
    "RefinedWeb": _FALCON_NAMES,
    "RefinedWebModel": _FALCON_NAMES,
}
# Old keys that win over the Llama-style one where given: BloomConfig, FalconConfig and TGI's RWConfig take an
# n_embed keyword as the hidden size ("backward compatibility").
_LEGACY_WINS = {family: {"hidden_size": "n_embed"} for family in ("bloom", "falcon", "RefinedWeb", "RefinedWebModel")}
_FALCON_TYPES = ("falcon", "RefinedWeb", "RefinedWebModel")
# The context of a Falcon config that does not say it: transformers' FalconConfig default, and what TGI's RWConfig
# sets where the config does not say it (a max_position_embeddings in the config overrides it)
FALCON_DEFAULT_POSITIONS = 2048
# Families with no position table (ALiBi), whose config sets no context: the planner takes the asked length
NO_POSITION_LIMIT = frozenset({"bloom"})


def _standard_names(config: dict[str, Any], family: str) -> dict[str, Any]:
    """The config with the family's own key names read as the Llama-style ones the planner reads."""
    names, legacy = FAMILY_NAMES.get(family, {}), _LEGACY_WINS.get(family, {})
    if not names and not legacy:
        return config
    standard = dict(config)
    for ours, theirs in names.items():
        if standard.get(ours) is None and config.get(theirs) is not None:
            standard[ours] = config[theirs]
    for ours, theirs in legacy.items():
        if config.get(theirs) is not None:
            standard[ours] = config[theirs]
    return standard


def _alias(family: str, key: str) -> str | None:
    return FAMILY_NAMES.get(family, {}).get(key)


def _refuse_encoder_decoder(config: dict[str, Any], family: str, file: Path) -> None:
    """T5 and other encoder-decoders: the planner's model is a decoder alone, whose KV cache is its self-attention's.
    An encoder-decoder also keeps each request's cross-attention keys and values over the encoder's output, and runs
    the encoder on the prompt, which that model does not size."""
    if family == "t5" or config.get("is_encoder_decoder") is True:
        raise LlmConfigError(
            f"{file.name} describes an encoder-decoder model ({family or 'model of unnamed type'}): the planner sizes "
            "decoder-only models, whose KV cache is the decoder's self-attention; an encoder-decoder also holds "
            "cross-attention keys and values over the encoder's output for each request, which it does not size"
        )


def _kv_heads(config: dict[str, Any], family: str, heads: int, where: str) -> int:
    """Key/value heads, where a family says them otherwise than num_key_value_heads."""
    if family == "gpt_bigcode":  # GPTBigCodeConfig: 1 if multi_query (its default) else n_head
        return 1 if config.get("multi_query", True) else heads
    if family == "gpt2" and config.get("attention_head_type") == "multiquery":
        # SantaCoder's remote-code GPT-2 (GPT2CustomConfig): one KV head, as TGI serves it (FlashSantacoder,
        # num_kv_heads=1, for a gpt2 model under bigcode/)
        return 1
    if family == "mpt":
        attn = config.get("attn_config")
        attn_type = attn.get("attn_type", "multihead_attention") if isinstance(attn, dict) else "multihead_attention"
        if attn_type != "multihead_attention":  # TGI's MPTModel raises "Not implemented attn ..."
            raise LlmConfigError(
                f"{where}: MPT with attn_type {attn_type!r} is not served by TGI (its MPT class runs only "
                "multihead_attention)"
            )
        return heads
    if family in _FALCON_TYPES:
        # FalconAttention: num_kv_heads where the new decoder architecture or no multi_query, else 1. The old
        # RefinedWeb types name it n_head_kv and default to the new architecture (RefinedWeb) and to no multi-query
        # (TGI's RWConfig); transformers' FalconConfig defaults to multi_query.
        new_architecture = config.get("new_decoder_architecture")
        if new_architecture is None:
            new_architecture = family == "RefinedWeb"
        multi_query = config.get("multi_query")
        if multi_query is None:
            multi_query = family == "falcon"
        if multi_query and not new_architecture:
            return 1
        key = "num_kv_heads" if config.get("num_kv_heads") is not None else "n_head_kv"
        return _whole(config, key, where, heads)
    return _whole(config, "num_key_value_heads", where, heads)


def _max_positions(config: dict[str, Any], family: str, where: str) -> int | None:
    """The context: None for an ALiBi family with no position table (its config sets none)."""
    if family in NO_POSITION_LIMIT and config.get("max_position_embeddings") is None:
        return None
    default = FALCON_DEFAULT_POSITIONS if family in _FALCON_TYPES else None
    return _whole(config, "max_position_embeddings", where, default, alias=_alias(family, "max_position_embeddings"))


def _past_loader_parameters(config: dict[str, Any], family: str, layers: int, hidden: int, where: str) -> int:
    """The parameters TGI's class for the family reads as bare tensors, past its weight loader, so that EETQ, FP8 and
    bitsandbytes leave them 16-bit: MPT's fused Wqkv (load_col slices `.weight`, and `.bias` unless no_bias, off the
    file and casts them to the model's dtype) and phi-msft's MLP (fc1 and fc2 through FastLinear.load, a bare
    get_tensor; their biases are not loaded). Read in text-generation-inference's
    server/text_generation_server/models/custom_modeling/mpt_modeling.py (load_col, MultiheadAttention) and
    phi_modeling.py (PhiMLP) at commit db931fcf."""
    if family == "mpt":  # Wqkv: (3 x d_model, d_model); MptConfig's no_bias defaults to true
        bias = 0 if config.get("no_bias", True) else 3 * hidden
        return layers * (3 * hidden * hidden + bias)
    if family == "phi-msft":  # fc1: (n_inner, n_embd), fc2: (n_embd, n_inner); PhiConfig's n_inner None: 4 x n_embd
        return layers * 2 * hidden * _whole(config, "n_inner", where, 4 * hidden)
    return 0


def _whole(config: dict[str, Any], key: str, where: str, default: int | None = None, alias: str | None = None) -> int:
    """config[key], a whole number of at least 1 (`default` where it is missing or null); `where` names the file,
    `alias` the family's own name for the key."""
    value = config.get(key)
    value = default if value is None else value  # a key written as null means the default, as transformers reads it
    if value is None:
        named = f"{key} (or {alias})" if alias else key
        raise LlmConfigError(f"{where} has no {named}: the planner needs the model's {_WHY[key]}")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LlmConfigError(f"{where}'s {key} is {value!r}: a whole number of at least 1 is expected")
    return value


_WHY = {
    "num_hidden_layers": "layer count",
    "hidden_size": "width",
    "num_attention_heads": "attention heads",
    "vocab_size": "vocabulary size",
    "max_position_embeddings": "context length",
    "num_key_value_heads": "key/value heads",
    "num_kv_heads": "key/value heads",
    "n_head_kv": "key/value heads",
    "intermediate_size": "MLP width, to estimate its parameters (or the .safetensors files beside the config)",
}


def _head_dim(config: dict[str, Any], hidden: int, heads: int, where: str) -> int:
    if config.get("head_dim") is not None:
        return _whole(config, "head_dim", where)
    if hidden % heads:
        raise LlmConfigError(f"{where}: hidden_size {hidden} is not a multiple of {heads} heads and no "
                             "head_dim is given")  # fmt: skip
    return hidden // heads


def _checkpoint_quantize(config: dict[str, Any], file: Path) -> str | None:
    """TGI's --quantize for a checkpoint quantized ahead of time; None for one in fp16/bf16/fp32."""
    quant = config.get("quantization_config")
    if not isinstance(quant, dict):
        return None
    method = str(quant.get("quant_method", "")).lower()
    bits = quant.get("bits", quant.get("w_bit", 4))
    if method in ("awq", "gptq") and bits == 4:
        return CHECKPOINT_QUANTIZE[method]
    if method == "fp8":
        return CHECKPOINT_QUANTIZE[method]
    if method == "bitsandbytes":  # TGI's get_model picks no --quantize for it ("Unknown quantization method")
        raise LlmConfigError(
            f"{file.name} describes a checkpoint quantized with bitsandbytes ahead of time, which TGI does not load: "
            "it makes bitsandbytes weights only at load, from 16-bit ones; give the unquantized model's "
            f"{CONFIG_NAME} and --quantize bitsandbytes-nf4 (4-bit) or bitsandbytes (8-bit)"
        )
    known = ", ".join(f"{m} (4-bit)" if m != "fp8" else m for m in CHECKPOINT_QUANTIZE)
    shown = f"{method} at {bits} bits" if method in ("awq", "gptq") else method or "an unnamed method"
    raise LlmConfigError(
        f"{file.name} describes a checkpoint quantized with {shown}, which the planner cannot size; it sizes "
        f"checkpoints quantized with {known}, or give the unquantized model's {CONFIG_NAME} and --quantize"
    )


def _counted_parameters(folder: Path) -> tuple[int, bool] | None:
    """(parameters, tied embeddings) from the headers of the .safetensors files in `folder`; None without any."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total, names = 0, set()
    for file in files:
        for name, entry in _safetensors_header(file).items():
            if name == "__metadata__":
                continue
            shape = entry.get("shape") if isinstance(entry, dict) else None
            if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
                raise LlmConfigError(f"{file.name}: tensor {name!r} has no shape in its header")
            total += math.prod(shape)
            names.add(name)
    return total, not _has_output_head(names)


def _has_output_head(names: Iterable[str]) -> bool:
    """An output head of its own among a checkpoint's tensors (lm_head, also under a multimodal model's prefix; the
    old phi-msft checkpoints' lm_head.linear, behind a norm of its own): the embeddings are not tied."""
    heads = ("lm_head.weight", "lm_head.linear.weight")
    return any(name in heads or name.endswith(tuple(f".{head}" for head in heads)) for name in names)


def _safetensors_header(file: Path) -> dict[str, Any]:
    """A safetensors file's header: an 8-byte little-endian length, then that much JSON."""
    try:
        with file.open("rb") as f:
            start = f.read(8)
            (length,) = struct.unpack("<Q", start) if len(start) == 8 else (0,)
            if not 2 <= length <= MAX_HEADER_BYTES:
                raise LlmConfigError(f"{file.name} is not a .safetensors file (no header)")
            header = json.loads(f.read(length).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LlmConfigError(f"{file.name}: its .safetensors header cannot be read ({exc})") from None
    if not isinstance(header, dict):
        raise LlmConfigError(f"{file.name}: its .safetensors header is not a JSON object")
    return header


def _estimated_parameters(
    config: dict[str, Any], family: str, vocab: int, file: Path, quantize: str | None
) -> tuple[int, bool]:
    """(parameters, tied embeddings) by the layer rule of a gated-MLP decoder family (the unquantized count, which
    the planner's bytes per parameter turn into a quantized checkpoint's size)."""
    if family not in ESTIMATED_FAMILIES:
        why = "a checkpoint quantized ahead of time" if quantize else "no .safetensors files beside it"
        raise LlmConfigError(
            f"{file.name}: the parameters of a {family or 'model of unnamed type'} model cannot be estimated from its "
            f"config ({why}); the planner estimates {', '.join(ESTIMATED_FAMILIES)} models, and counts any other "
            "from the unquantized .safetensors files beside config.json (on the command line, the folder holding "
            "both; only their headers are read)"
        )
    biased, norms, head_norms, tied_default = ESTIMATED_FAMILIES[family]
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = _head_dim(config, hidden, heads, file.name)
    mlp_width = _whole(config, "intermediate_size", file.name)
    query, key_value = heads * head_dim, kv_heads * head_dim
    attention = 2 * hidden * query + 2 * hidden * key_value
    if biased is None:
        biased = "qkvo" if config.get("attention_bias") else ""
    attention += sum({"q": query, "k": key_value, "v": key_value, "o": hidden}[p] for p in biased)
    attention += 2 * head_dim if head_norms else 0
    mlp = 3 * hidden * mlp_width + (2 * mlp_width + hidden if config.get("mlp_bias") else 0)
    experts = config.get("num_local_experts")
    if isinstance(experts, int) and experts > 1:  # a mixture of experts: every expert's MLP, and the router
        mlp = experts * mlp + hidden * experts
    tied = bool(config.get("tie_word_embeddings", tied_default))
    per_layer = attention + mlp + norms * hidden
    return layers * per_layer + hidden + vocab * hidden * (1 if tied else 2), tied


def parameters_text(count: float) -> str:
    """A parameter count as model cards write it: 494 million, 7.24 billion."""
    return f"{count / 1e6:.0f} million" if count < 1e9 else f"{count / 1e9:.2f} billion"


def _model_id(config: dict[str, Any], file: Path) -> str:
    """The Hub id for the launch line: the config's own name for it, or the Hub cache's folder name
    (models--org--name/snapshots/<revision>/config.json); else "" (the planner's launch line then holds a
    placeholder: an uploaded file's folder name is the server's, not the model's)."""
    named = config.get("_name_or_path")
    if isinstance(named, str) and named.count("/") == 1 and not named.startswith((".", "/", "~")):
        return named
    for folder in file.resolve().parents:
        if folder.name.startswith("models--") and folder.name.count("--") >= 2:
            return "/".join(folder.name.split("--")[1:3])
    return ""


__all__ = ["LLMS", "LlmConfigError", "LlmSpec", "hub_spec", "is_hub_id", "parameters_text", "spec_from_config"]
