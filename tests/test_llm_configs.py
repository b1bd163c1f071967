"""The LLM planner on any model's Hugging Face config.json (engine/bench/llms.py) and TGI's 8-bit KV cache: parameter
counts against the published ones, safetensors headers, the launch line's model id, and bad configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from engine.bench.config import LlmRequest
from engine.bench.llms import LLMS, LlmConfigError, parameters_text, spec_from_config
from engine.bench.planner import MODEL_ID_PLACEHOLDER, QUANT_BYTES_PER_PARAM, PlanError, llm_weight_bytes, plan_llm
from engine.core.errors import InputError
from engine.core.weights import WeightsError

# The shapes of published models' config.json files (only the keys the planner reads), with their published sizes.
MISTRAL = dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, max_position_embeddings=32768,
               tie_word_embeddings=False, _name_or_path="mistralai/Mistral-7B-v0.1")  # fmt: skip
PUBLISHED = {
    "mistral-7b": (MISTRAL, 7.24e9),
    "llama-2-7b": (
        dict(
            model_type="llama",
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=32000,
            max_position_embeddings=4096,
        ),
        6.74e9,
    ),
    "gemma-2b": (
        dict(
            model_type="gemma",
            hidden_size=2048,
            intermediate_size=16384,
            num_hidden_layers=18,
            num_attention_heads=8,
            num_key_value_heads=1,
            head_dim=256,
            vocab_size=256000,
            max_position_embeddings=8192,
        ),
        2.51e9,
    ),  # fmt: skip  (tied embeddings by the family's default)
    "qwen2-7b": (
        dict(
            model_type="qwen2",
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
            max_position_embeddings=131072,
            tie_word_embeddings=False,
        ),
        7.62e9,
    ),
    "phi-3-mini": (
        dict(
            model_type="phi3",
            hidden_size=3072,
            intermediate_size=8192,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=32064,
            max_position_embeddings=4096,
        ),
        3.82e9,
    ),
    "mixtral-8x7b": ({**MISTRAL, "model_type": "mixtral", "num_local_experts": 8}, 46.7e9),
    "gemma-3-1b": (
        dict(
            model_type="gemma3_text",
            hidden_size=1152,
            intermediate_size=6912,
            num_hidden_layers=26,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=256,
            vocab_size=262144,
            max_position_embeddings=32768,
        ),
        999_885_952,
    ),
}


def _config(folder: Path, values: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(values))
    return folder / "config.json"


@pytest.mark.parametrize("name", PUBLISHED)
def test_parameters_estimated_from_a_config_match_the_published_counts(tmp_path: Path, name: str) -> None:
    values, published = PUBLISHED[name]
    spec = spec_from_config(_config(tmp_path, values))
    assert spec.parameters == pytest.approx(published, rel=2e-3)
    assert spec.parameters_basis.startswith("estimated from config.json's shape")
    assert spec.tied_embeddings == name.startswith("gemma")
    if name in LLMS:  # the presets' shapes, read from the config
        preset = LLMS[name]
        shape = ("layers", "hidden", "heads", "kv_heads", "head_dim", "vocab")
        assert [getattr(spec, k) for k in shape] == [getattr(preset, k) for k in shape]


def test_a_config_plans_as_its_preset_does(tmp_path: Path) -> None:
    """Mistral-7B from its config.json: the same shape as the preset, 7.2417e9 parameters for its 7.24e9."""
    preset = plan_llm(LlmRequest("L4", "mistral-7b", max_total_tokens=4096))
    from_file = plan_llm(LlmRequest("L4", config=_config(tmp_path, MISTRAL), max_total_tokens=4096))
    assert from_file["launch"] == preset["launch"]  # the id from _name_or_path, the same flags
    # the config's 1.7 million parameters more than the preset's rounded count take 26 tokens' room (128 KiB each)
    extra = (from_file["model"]["parameters"] - 7.24e9) * 2 / 131_072
    fewer = preset["memory"]["kv_token_capacity"] - from_file["memory"]["kv_token_capacity"]
    assert fewer == pytest.approx(extra, abs=1) and 25 <= fewer <= 27
    assert from_file["model"]["key"] == "config.json"  # the report names no server path


def test_safetensors_headers_count_any_model_exactly(tmp_path: Path) -> None:
    """A model type the planner cannot estimate is counted from the headers beside its config (weights unread)."""
    config = dict(model_type="gpt_neox", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=100,
                  max_position_embeddings=512)  # fmt: skip
    with pytest.raises(LlmConfigError, match=r"cannot be estimated.*headers are read"):
        spec_from_config(_config(tmp_path / "alone", config))
    folder = tmp_path / "model"
    _config(folder, config)
    save_file({"embed.weight": torch.zeros(100, 64), "layers.0.w": torch.zeros(64, 192)}, folder / "a.safetensors")
    save_file({"lm_head.weight": torch.zeros(100, 64, dtype=torch.float16)}, folder / "b.safetensors")
    spec = spec_from_config(folder)  # the folder holding config.json
    assert spec.parameters == 100 * 64 * 2 + 64 * 192 and not spec.tied_embeddings
    assert spec.parameters_basis == "counted from the .safetensors headers beside config.json"
    (folder / "c.safetensors").write_bytes(b"<html>not a model</html>")
    with pytest.raises(LlmConfigError, match=r"c.safetensors is not a .safetensors file"):
        spec_from_config(folder)


# The checkpoints' own counts, as their .safetensors headers (and the Hub) give them: the layer rule gives exactly
# these, so a norm, bias, router or head norm miscounted shows here, not within the published counts' rounding.
COUNTED = {
    "mistral-7b": 7_241_732_096,
    "llama-2-7b": 6_738_415_616,
    "gemma-2b": 2_506_172_416,
    "qwen2-7b": 7_615_616_512,
    "phi-3-mini": 3_821_079_552,
    "mixtral-8x7b": 46_702_792_704,
    "gemma-3-1b": 999_885_952,
}


@pytest.mark.parametrize("name", COUNTED)
def test_parameters_estimated_from_a_config_are_the_checkpoints_exact_counts(tmp_path: Path, name: str) -> None:
    """Within 0.2% of the rounded published sizes let a Mixtral without its router (1 million parameters) or a Gemma
    3 without its query and key norms pass: the exact counts do not."""
    assert spec_from_config(_config(tmp_path, PUBLISHED[name][0])).parameters == COUNTED[name]


def test_attention_and_mlp_biases_are_counted_where_the_config_has_them(tmp_path: Path) -> None:
    """A llama-family config's attention_bias adds the q, k, v and o projections' biases to each layer, mlp_bias the
    gate, up and down projections' (transformers' LlamaAttention and LlamaMLP)."""
    llama = PUBLISHED["llama-2-7b"][0]
    plain = spec_from_config(_config(tmp_path / "plain", llama)).parameters
    attention = spec_from_config(_config(tmp_path / "attention", {**llama, "attention_bias": True})).parameters
    mlp = spec_from_config(_config(tmp_path / "mlp", {**llama, "mlp_bias": True})).parameters
    assert attention - plain == 32 * 4 * 4096  # 32 heads x 128 = 4096 for each of q, k, v (no GQA) and o
    assert mlp - plain == 32 * (2 * 11008 + 4096)  # gate and up: 11008 each; down: 4096


def test_a_quantized_checkpoint_is_sized_from_its_shape_not_its_packed_tensors(tmp_path: Path) -> None:
    """An AWQ checkpoint's headers hold int32 words of eight 4-bit weights each, and the Hub counts those words: either
    count, taken as parameters, would size its weights at about an eighth of what loads. The shape's unquantized count
    is what the planner's bytes per parameter apply to."""
    awq = {**MISTRAL, "quantization_config": {"quant_method": "AWQ", "bits": 4, "group_size": 128}}  # any case
    folder = tmp_path / "awq"
    _config(folder, awq)
    save_file({"model.layers.0.mlp.up_proj.qweight": torch.zeros(4096, 1792, dtype=torch.int32)},
              folder / "model.safetensors")  # fmt: skip
    spec = spec_from_config(folder)
    assert spec.checkpoint_quantize == "awq" and spec.parameters == COUNTED["mistral-7b"]
    assert spec.parameters_basis.startswith("estimated from config.json's shape")
    assert spec_from_config(folder / "config.json", hub_count=(1_000_000, False)).parameters == COUNTED["mistral-7b"]


def test_an_output_head_is_found_under_a_multimodal_models_prefix(tmp_path: Path) -> None:
    """LLaVA's checkpoints keep the language model's head as language_model.lm_head.weight: its embeddings are not
    tied, as a bare lm_head.weight says (looking for the bare name alone would call them tied: a quantized plan then
    kept one of its two vocab-sized matrices in fp16, not both)."""
    config = dict(model_type="gpt_neox", hidden_size=4, num_hidden_layers=1, num_attention_heads=2, vocab_size=10,
                  max_position_embeddings=64)  # fmt: skip
    for head, tied in (("language_model.lm_head.weight", False), ("language_model.model.norm.weight", True)):
        folder = tmp_path / str(tied)
        _config(folder, config)
        save_file({"language_model.model.embed_tokens.weight": torch.zeros(10, 4), head: torch.zeros(10, 4)},
                  folder / "model.safetensors")  # fmt: skip
        assert spec_from_config(folder).tied_embeddings is tied


def test_files_that_are_not_what_their_names_say_are_refused_saying_so(tmp_path: Path) -> None:
    """A config.json past 4 MiB is no model's config (it is refused unread), and a .safetensors file shorter than its
    8-byte length has no header (said so, not as a JSON parser's complaint)."""
    big = tmp_path / "big" / "config.json"
    big.parent.mkdir()
    with big.open("wb") as f:
        f.truncate(4 * 2**20 + 1)
    with pytest.raises(LlmConfigError, match=r"config\.json is 4,194,305 bytes: a model's config\.json is a few KiB"):
        spec_from_config(big)
    config = dict(model_type="gpt_neox", hidden_size=4, num_hidden_layers=1, num_attention_heads=2, vocab_size=10,
                  max_position_embeddings=64)  # fmt: skip
    folder = tmp_path / "short"
    _config(folder, config)
    (folder / "model.safetensors").write_bytes(b"abc")
    with pytest.raises(LlmConfigError, match=r"^model\.safetensors is not a \.safetensors file \(no header\)$"):
        spec_from_config(folder)


def test_the_launch_line_names_the_model_or_says_it_cannot(tmp_path: Path) -> None:
    unnamed = {k: v for k, v in MISTRAL.items() if k != "_name_or_path"}
    snapshot = tmp_path / "hub" / "models--mistralai--Mistral-7B-Instruct-v0.2" / "snapshots" / "41b61a3"
    plan = plan_llm(LlmRequest("L4", config=_config(snapshot, unnamed)))
    assert "--model-id mistralai/Mistral-7B-Instruct-v0.2 " in plan["launch"]  # the Hub cache's folder name
    plan = plan_llm(LlmRequest("L4", config=_config(tmp_path / "upload-3f2a", unnamed)))
    assert f"--model-id {MODEL_ID_PLACEHOLDER} " in plan["launch"]  # an upload's folder is the server's, not a name
    assert any("does not say which model it describes" in w for w in plan["warnings"])
    # a path written as the config's name is no Hub id either: OWNER/NAME has one slash
    plan = plan_llm(LlmRequest("L4", config=_config(tmp_path / "run", {**MISTRAL, "_name_or_path": "runs/3/final"})))
    assert f"--model-id {MODEL_ID_PLACEHOLDER} " in plan["launch"]


def test_an_fp8_kv_cache_halves_the_bytes_per_token_on_the_flash_path_only(tmp_path: Path) -> None:
    base = plan_llm(LlmRequest("H100", "llama-2-7b", max_total_tokens=4096))
    fp8 = plan_llm(LlmRequest("H100", "llama-2-7b", max_total_tokens=4096, kv_cache_dtype="fp8_e4m3fn"))
    assert fp8["memory"]["kv_bytes_per_token"] * 2 == base["memory"]["kv_bytes_per_token"] == 524_288
    assert fp8["memory"]["per_gpu"]["kv_cache_bytes"] == base["memory"]["per_gpu"]["kv_cache_bytes"]
    assert fp8["memory"]["kv_token_capacity"] == pytest.approx(2 * base["memory"]["kv_token_capacity"], abs=1)
    assert "--kv-cache-dtype fp8_e4m3fn" in fp8["launch"] and "--kv-cache-dtype" not in base["launch"]
    # TGI's non-flash path (a V100: compute capability 7.0) ignores the flag: planned and launched in 16 bits
    v100 = plan_llm(LlmRequest("V100-16GB", "tinyllama-1.1b", kv_cache_dtype="fp8_e5m2"))
    assert v100["memory"]["kv_bytes_per_token"] == LLMS["tinyllama-1.1b"].kv_bytes_per_token()
    assert "--kv-cache-dtype" not in v100["launch"] and "is ignored by TGI's non-flash path" in str(v100["warnings"])


def test_a_checkpoint_quantized_ahead_of_time_is_planned_as_tgi_loads_it(tmp_path: Path) -> None:
    awq = {**MISTRAL, "_name_or_path": "TheBloke/Mistral-7B-v0.1-AWQ",
           "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}}  # fmt: skip
    plan = plan_llm(LlmRequest("L4", config=_config(tmp_path / "awq", awq)))
    assert plan["flags"]["--quantize"] == "awq" and "--model-id TheBloke/Mistral-7B-v0.1-AWQ " in plan["launch"]
    assert not any("placeholder" in w for w in plan["warnings"])  # the checkpoint itself, not one to find
    assert plan["reasons"][0] == "--quantize awq: the checkpoint is quantized so ahead of time"
    with pytest.raises(PlanError, match=r"quantized with awq ahead of time.*give quantize auto or awq"):
        plan_llm(LlmRequest("L4", config=_config(tmp_path / "awq", awq), quantize="none"))
    eight_bit = {**awq, "quantization_config": {"quant_method": "gptq", "bits": 8}}
    with pytest.raises(LlmConfigError, match="quantized with gptq at 8 bits, which the planner cannot size"):
        spec_from_config(_config(tmp_path / "gptq8", eight_bit))
    compressed = {**awq, "quantization_config": {"quant_method": "compressed-tensors"}}
    with pytest.raises(LlmConfigError, match=r"compressed-tensors.*give the unquantized model's config.json"):
        spec_from_config(_config(tmp_path / "ct", compressed))
    # a bitsandbytes 4-bit upload (load_in_4bit, nf4): TGI auto-selects no --quantize for it and cannot load its packed
    # weights; it makes nf4 itself at load from the 16-bit model, which the refusal names
    bnb = {**awq, "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                          "bnb_4bit_quant_type": "nf4"}}  # fmt: skip
    refusal = r"with bitsandbytes ahead of time, which TGI does not load: .*config.json and --quantize bitsandbytes-nf4"
    with pytest.raises(LlmConfigError, match=refusal):
        spec_from_config(_config(tmp_path / "bnb", bnb))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({**MISTRAL, "num_hidden_layers": None}, "has no num_hidden_layers: the planner needs the model's layer count"),
        ({**MISTRAL, "hidden_size": "4096"}, "hidden_size is '4096': a whole number of at least 1 is expected"),
        ({**MISTRAL, "num_key_value_heads": 5}, "32 attention heads do not share out over 5 key/value heads"),
        ({**MISTRAL, "intermediate_size": None}, "has no intermediate_size"),
        # a zero or a JSON true is no count (zero heads would crash with ZeroDivisionError, true plan one layer)
        ({**MISTRAL, "num_attention_heads": 0}, "num_attention_heads is 0: a whole number of at least 1 is expected"),
        ({**MISTRAL, "num_hidden_layers": True}, "num_hidden_layers is True: a whole number of at least 1 is expected"),
        # heads of 4100 / 32 = 128.125 dimensions: no head_dim to say otherwise, so no shape (not 128 by floor)
        ({**MISTRAL, "hidden_size": 4100}, "hidden_size 4100 is not a multiple of 32 heads and no head_dim is given"),
        ([1, 2], "is not a JSON object"),
        # speculators' configs name their base model (TGI serves it with the heads): it said "no num_hidden_layers"
        (
            {"base_model_name_or_path": "mistralai/Mistral-7B-Instruct-v0.2", "medusa_num_heads": 3},
            r"describes a Medusa speculator \(3 heads\) for mistralai/Mistral-7B-Instruct-v0\.2, not a model: TGI "
            r"serves its base model with the heads added; plan the base model \(its config\.json or Hub id\)",
        ),
        (
            {**MISTRAL, "model_type": "mlp_speculator", "n_predict": 4, "base_model_name_or_path": "m/base"},
            r"describes an MLP speculator \(4 heads\) for m/base, not a model",
        ),
        # the folder is the command line's: an upload (the tab, the API) is the one file
        (
            {"model_type": "llava", "text_config": MISTRAL},
            "describes a multimodal model: the parameters outside .*; "
            "give its Hub id while online, or on the command line the folder holding the config",
        ),
    ],
)
def test_a_config_that_cannot_be_planned_says_why(tmp_path: Path, values: Any, message: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    with pytest.raises(InputError, match=message):
        plan_llm(LlmRequest("L4", config=path))


def test_a_configs_problem_names_the_file_as_given_and_counts_read_as_model_cards_write_them(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({**MISTRAL, "vocab_size": None}))
    with pytest.raises(LlmConfigError, match=r"missing\.json has no vocab_size"):
        spec_from_config(missing)
    assert [parameters_text(n) for n in (494_032_768, 7.2417e9)] == ["494 million", "7.24 billion"]


def test_the_request_names_exactly_one_model(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="no model: give llm"):
        LlmRequest.build({"gpu": "L4"})
    with pytest.raises(PlanError, match=r"two models, llm mistral-7b and config config.json: give one"):
        LlmRequest.build({"gpu": "L4", "llm": "mistral-7b", "config": str(_config(tmp_path, MISTRAL))})
    (tmp_path / "empty").mkdir()
    with pytest.raises(LlmConfigError, match=r"no config.json in empty/"):
        plan_llm(LlmRequest("L4", config=tmp_path / "empty"))
    (tmp_path / "photo.json").write_bytes(b"\xff\xd8\xff\xe0")
    with pytest.raises(LlmConfigError, match=r"photo.json is not text"):
        plan_llm(LlmRequest("L4", config=tmp_path / "photo.json"))
    # text that is no JSON (a README uploaded, an empty file) says what is taken, as every other refusal here does
    for name, text in (("notes.txt", "hello, not a config\n"), ("empty.json", "")):
        (tmp_path / name).write_text(text)
        with pytest.raises(LlmConfigError, match=rf"^{name}: not valid JSON: .*; give a model's config\.json$"):
            plan_llm(LlmRequest("L4", config=tmp_path / name))


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline Hub cache holding Qwen/Qwen2-0.5B's config.json at one revision, as huggingface_hub lays it out."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    repo = cache / "models--Qwen--Qwen2-0.5B"
    _config(repo / "snapshots" / "91d2aff", QWEN2_05B)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("91d2aff")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return repo / "snapshots" / "91d2aff"


QWEN2_05B = dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                 tie_word_embeddings=True)  # fmt: skip


def test_a_hub_model_id_is_planned_from_the_hubs_local_cache(hub_cache: Path) -> None:
    plan = plan_llm(LlmRequest("L4", "Qwen/Qwen2-0.5B"))
    assert plan["model"]["name"] == "Qwen/Qwen2-0.5B" and "--model-id Qwen/Qwen2-0.5B " in plan["launch"]
    assert plan["model"]["parameters"] == 494_032_768  # Qwen2-0.5B's published 494 million
    assert plan["model"]["parameters_basis"] == "estimated from config.json's shape (qwen2 layers)"
    # offline and not cached: one line saying so, not huggingface_hub's traceback, and what to give instead (the
    # tab and the API take an upload of it; they have no "local path" to give)
    with pytest.raises(WeightsError, match="not in the Hub's local cache and HF_HUB_OFFLINE is set; download it or "
                       r"give the model's config\.json in place of its id"):  # fmt: skip
        plan_llm(LlmRequest("L4", "Qwen/Qwen2-7B"))
    with pytest.raises(PlanError, match=r"llm 'gpt-5' is neither a preset .* nor a Hub model id \(OWNER/NAME"):
        LlmRequest.build({"gpu": "L4", "llm": "gpt-5"})


def test_a_hub_model_online_takes_the_hubs_count_of_its_parameters(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Online, the Hub's reading of the .safetensors headers replaces the estimate (exact, weights unread)."""
    from types import SimpleNamespace

    from huggingface_hub import HfApi

    import engine.core.hub

    monkeypatch.setattr(engine.core.hub, "hub_offline", lambda: False)
    asked = []

    def metadata(self: object, repo: str) -> SimpleNamespace:
        asked.append(repo)
        return SimpleNamespace(weight_map={"model.embed_tokens.weight": "model.safetensors"},
                               parameter_count={"BF16": 494_032_768, "F32": 0})  # fmt: skip

    monkeypatch.setattr(HfApi, "get_safetensors_metadata", metadata)
    spec = plan_llm(LlmRequest("L4", "Qwen/Qwen2-0.5B"))["model"]
    assert asked == ["Qwen/Qwen2-0.5B"] and spec["parameters"] == 494_032_768 and spec["tied_embeddings"]
    assert spec["parameters_basis"] == "counted by the Hub from its .safetensors headers"
    save_file({"lm_head.weight": torch.zeros(3, 2)}, hub_cache / "model.safetensors")  # headers in the cache: no ask
    spec = plan_llm(LlmRequest("L4", "Qwen/Qwen2-0.5B"))["model"]
    assert asked == ["Qwen/Qwen2-0.5B"] and spec["parameters"] == 6 and not spec["tied_embeddings"]


def test_a_key_written_as_null_takes_its_default_and_a_multimodal_config_its_language_models_shape(
    tmp_path: Path,
) -> None:
    """transformers reads num_key_value_heads: null as one KV head per query head; a LLaVA-style config nests the
    language model's shape, whose KV cache is what the planner sizes (the Hub's count gives the parameters)."""
    spec = spec_from_config(_config(tmp_path / "null", {**MISTRAL, "num_key_value_heads": None}))
    assert spec.kv_heads == 32
    nested = _config(tmp_path / "llava", {"model_type": "llava", "text_config": MISTRAL, "vision_config": {}})
    spec = spec_from_config(nested, name="llava-hf/llava-v1.6-mistral-7b-hf", hub_count=(7_566_747_648, False))
    assert (spec.layers, spec.kv_heads, spec.parameters) == (32, 8, 7_566_747_648)
    assert spec.parameters_basis == "counted by the Hub from its .safetensors headers"


# Published configs of families whose config class names the shape otherwise (only the keys the planner reads), and
# the shape TGI plans them with: (layers, hidden, heads, kv_heads, head_dim, max_positions).
GPT2 = dict(model_type="gpt2", n_embd=768, n_layer=12, n_head=12, n_positions=1024, n_ctx=1024, vocab_size=50257)
STARCODER = dict(model_type="gpt_bigcode", n_embd=6144, n_layer=40, n_head=48, n_positions=8192, vocab_size=49152,
                 multi_query=True, _name_or_path="bigcode/starcoder")  # fmt: skip
BLOOM_560M = dict(model_type="bloom", hidden_size=1024, n_layer=24, n_head=16, vocab_size=250880,
                  _name_or_path="bigscience/bloom-560m")  # fmt: skip
FAMILY_CONFIGS = {
    "gpt2": (GPT2, (12, 768, 12, 12, 64, 1024)),
    "starcoder": (STARCODER, (40, 6144, 48, 1, 128, 8192)),
    "gpt-j-6b": (
        dict(model_type="gptj", n_embd=4096, n_layer=28, n_head=16, n_positions=2048, rotary_dim=64, vocab_size=50400),
        (28, 4096, 16, 16, 256, 2048),
    ),
    "bloom-560m": (BLOOM_560M, (24, 1024, 16, 16, 64, None)),  # ALiBi: no position table
    "mpt-7b": (
        dict(
            model_type="mpt",
            d_model=4096,
            n_heads=32,
            n_layers=32,
            max_seq_len=2048,
            vocab_size=50432,
            expansion_ratio=4,
            attn_config={"alibi": True, "attn_type": "multihead_attention"},
        ),
        (32, 4096, 32, 32, 128, 2048),
    ),
    "falcon-7b": (
        dict(
            model_type="falcon",
            hidden_size=4544,
            num_hidden_layers=32,
            num_attention_heads=71,
            multi_query=True,
            new_decoder_architecture=False,
            parallel_attn=True,
            vocab_size=65024,
        ),
        (32, 4544, 71, 1, 64, 2048),
    ),
    "falcon-40b": (
        dict(
            model_type="falcon",
            hidden_size=8192,
            num_hidden_layers=60,
            num_attention_heads=128,
            num_kv_heads=8,
            new_decoder_architecture=True,
            vocab_size=65024,
        ),
        (60, 8192, 128, 8, 64, 2048),
    ),
}
SHAPE = ("layers", "hidden", "heads", "kv_heads", "head_dim", "max_positions")


def _header_only(folder: Path, shapes: dict[str, list[int]]) -> None:
    """A .safetensors file holding only its header (the planner reads no more): a checkpoint's count at full size
    without writing its weights."""
    header = {name: {"dtype": "F16", "shape": shape, "data_offsets": [0, 0]} for name, shape in shapes.items()}
    text = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(len(text).to_bytes(8, "little") + text)


def _family_folder(folder: Path, values: dict[str, Any], parameters: int = 1000) -> Path:
    _config(folder, values)
    _header_only(folder, {"transformer.wte.weight": [parameters]})
    return folder


def _transformers_shape(values: dict[str, Any]) -> tuple[int | None, ...]:
    """The shape as transformers' config class for the model type reads the same dict (FalconAttention's rule for
    the KV heads; MPT's context is its max_seq_len, as TGI's launcher reads it; BLOOM has none)."""
    import transformers

    rest = {key: value for key, value in values.items() if key != "model_type"}
    config = transformers.AutoConfig.for_model(values["model_type"], **rest)
    heads = config.num_attention_heads
    if values["model_type"] == "falcon":
        kv_heads = config.num_kv_heads if config.new_decoder_architecture or not config.multi_query else 1
    else:
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
    positions = {"bloom": None, "mpt": getattr(config, "max_seq_len", None)}.get(
        values["model_type"], getattr(config, "max_position_embeddings", None)
    )
    return (config.num_hidden_layers, config.hidden_size, heads, kv_heads, config.hidden_size // heads, positions)


@pytest.mark.parametrize("name", FAMILY_CONFIGS)
def test_a_familys_own_key_names_are_read_as_transformers_reads_them(tmp_path: Path, name: str) -> None:
    """GPT-2, StarCoder, GPT-J, BLOOM, MPT and Falcon configs name layers, width, heads and context through their
    config class's attribute_map (n_layer, n_embd, d_model, ...): they were refused as having no num_hidden_layers.
    Multi-query StarCoder and Falcon-7B keep one KV head; Falcon-40B's new architecture eight."""
    values, published = FAMILY_CONFIGS[name]
    spec = spec_from_config(_family_folder(tmp_path, values))
    assert tuple(getattr(spec, k) for k in SHAPE) == published == _transformers_shape(values)
    assert spec.parameters == 1000 and spec.parameters_basis.startswith("counted from the .safetensors headers")


@pytest.mark.parametrize(
    ("values", "published"),
    [
        # TGI's RWConfig (flash_rw_modeling.py) for the remote-code Falcon types: n_layer, n_head, n_head_kv;
        # RefinedWeb is the new decoder architecture, RefinedWebModel multi-query; the context is 2048
        (
            dict(
                model_type="RefinedWebModel",
                hidden_size=4544,
                n_layer=32,
                n_head=71,
                multi_query=True,
                parallel_attn=True,
                vocab_size=65024,
            ),
            (32, 4544, 71, 1, 64, 2048),
        ),
        (
            dict(
                model_type="RefinedWeb",
                hidden_size=8192,
                n_layer=60,
                n_head=128,
                n_head_kv=8,
                parallel_attn=True,
                vocab_size=65024,
            ),
            (60, 8192, 128, 8, 64, 2048),
        ),
        # TGI's PhiConfig (phi_modeling.py) for phi-msft: n_embd, n_layer, n_head, n_positions
        (
            dict(model_type="phi-msft", n_embd=2560, n_layer=32, n_head=32, n_positions=2048, vocab_size=51200),
            (32, 2560, 32, 32, 80, 2048),
        ),
    ],
)
def test_remote_code_falcon_and_phi_msft_configs_are_read_as_tgis_config_classes_read_them(
    tmp_path: Path, values: dict[str, Any], published: tuple[int, ...]
) -> None:
    spec = spec_from_config(_family_folder(tmp_path, values))
    assert tuple(getattr(spec, k) for k in SHAPE) == published


def test_a_falcons_alibi_key_is_read_for_tgi_to_pick_its_class(tmp_path: Path) -> None:
    """tiiuae/falcon-rw-1b says alibi: true (TGI's get_model then keeps it off its flash Falcon class); Falcon-7B
    says nothing (rotary), nor do BLOOM (ALiBi, no key) and MPT (alibi inside attn_config)."""
    rw = dict(model_type="falcon", alibi=True, hidden_size=2048, num_hidden_layers=24, num_attention_heads=32,
              multi_query=False, new_decoder_architecture=False, parallel_attn=False, vocab_size=50304)  # fmt: skip
    spec = spec_from_config(_family_folder(tmp_path / "rw", rw))
    assert spec.alibi and (spec.layers, spec.kv_heads, spec.head_dim, spec.max_positions) == (24, 32, 64, 2048)
    assert not spec_from_config(_family_folder(tmp_path / "rotary", {**rw, "alibi": False})).alibi
    for name in ("falcon-7b", "bloom-560m", "mpt-7b"):
        assert not spec_from_config(_family_folder(tmp_path / name, FAMILY_CONFIGS[name][0])).alibi


@pytest.mark.parametrize(("value", "alibi"), [(None, False), (0, False), (1, True), ("yes", True)])
def test_a_falcons_alibi_key_is_read_as_tgis_get_model_tests_it(tmp_path: Path, value: Any, alibi: bool) -> None:
    """get_model tests config_dict.get("alibi", False) for truth, so a null key is a rotary Falcon and any other
    truthy value an ALiBi one, as true and false are."""
    rw = dict(model_type="falcon", alibi=value, hidden_size=2048, num_hidden_layers=24, num_attention_heads=32,
              vocab_size=50304)  # fmt: skip
    assert spec_from_config(_family_folder(tmp_path, rw)).alibi is alibi


def test_a_llama_style_key_wins_over_the_familys_and_bloom_takes_n_embed_as_transformers_does(tmp_path: Path) -> None:
    """attribute_map sends num_hidden_layers to n_layer, so a config holding both is read at num_hidden_layers;
    BloomConfig takes the old n_embed over hidden_size."""
    import transformers

    both = {**GPT2, "num_hidden_layers": 6, "n_layer": 12}
    assert spec_from_config(_family_folder(tmp_path / "gpt2", both)).layers == 6
    assert transformers.GPT2Config(**both).num_hidden_layers == 6
    old_bloom = {**BLOOM_560M, "n_embed": 2048}
    assert spec_from_config(_family_folder(tmp_path / "bloom", old_bloom)).hidden == 2048
    assert transformers.BloomConfig(**old_bloom).hidden_size == 2048


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # T5: an encoder-decoder, whose cross-attention KV cache the decoder-only model does not size
        (
            dict(
                model_type="t5",
                d_model=512,
                num_heads=8,
                num_layers=6,
                d_kv=64,
                vocab_size=32128,
                is_encoder_decoder=True,
            ),
            r"describes an encoder-decoder model \(t5\): the planner sizes decoder-only models",
        ),
        # TGI's MPT class runs only multihead_attention ("Not implemented attn ...")
        (
            dict(FAMILY_CONFIGS["mpt-7b"][0], attn_config={"attn_type": "multiquery_attention"}),
            "MPT with attn_type 'multiquery_attention' is not served by TGI",
        ),
        # the family's own name is said where neither is given
        ({**GPT2, "n_layer": None}, r"has no num_hidden_layers \(or n_layer\): the planner needs the model's layer"),
    ],
)
def test_a_family_config_that_cannot_be_planned_says_why(tmp_path: Path, values: Any, message: str) -> None:
    with pytest.raises(LlmConfigError, match=message):
        spec_from_config(_family_folder(tmp_path, values))


def test_a_family_config_alone_is_refused_for_its_parameters(tmp_path: Path) -> None:
    """These families are not estimated from the shape: without .safetensors headers (or the Hub's count) the
    config is refused for its parameters, not for its key names."""
    with pytest.raises(LlmConfigError, match=r"parameters of a gpt_bigcode model cannot be estimated from its config"):
        spec_from_config(_config(tmp_path, STARCODER))


def test_bloom_and_starcoder_from_their_configs_plan_on_a_card(tmp_path: Path) -> None:
    """BLOOM-560M (559,214,592 parameters) on a T4: TGI's own CausalLM, the default 4096 tokens as TGI's launcher
    takes them where the config sets no context (ALiBi), said in a warning; StarCoder's one KV head makes its cache
    40 layers x 128 dimensions x 2 (keys and values) x 2 bytes a token."""
    bloom = tmp_path / "bloom"
    _config(bloom, BLOOM_560M)
    _header_only(bloom, {"word_embeddings.weight": [250880, 1024], "h.weights": [302_313_472]})
    plan = plan_llm(LlmRequest("T4", config=bloom / "config.json"))
    assert plan["model"]["parameters"] == 559_214_592 and plan["flags"]["--max-total-tokens"] == 4096
    assert plan["memory"]["kv_bytes_per_token"] == 2 * 24 * 16 * 64 * 2
    assert any("has no position table (ALiBi)" in w for w in plan["warnings"])
    assert not any("exceeds" in w for w in plan["warnings"])
    starcoder = _family_folder(tmp_path / "starcoder", STARCODER, 15_517_462_528)
    plan = plan_llm(LlmRequest("A100-80GB", config=starcoder / "config.json", max_total_tokens=8192))
    assert plan["memory"]["kv_bytes_per_token"] == 2 * 40 * 1 * 128 * 2
    assert "--model-id bigcode/starcoder " in plan["launch"] and plan["fits"]


def test_falcon_keys_left_unsaid_take_their_config_classs_defaults(tmp_path: Path) -> None:
    """FalconConfig defaults to multi_query (one KV head) where the config does not say; TGI's RWConfig takes the
    RefinedWeb type as the new decoder architecture, whose n_head_kv groups hold even with multi_query written."""
    import transformers

    unsaid = {key: value for key, value in FAMILY_CONFIGS["falcon-7b"][0].items() if key != "multi_query"}
    assert spec_from_config(_family_folder(tmp_path / "falcon", unsaid)).kv_heads == 1
    assert transformers.FalconConfig(**{k: v for k, v in unsaid.items() if k != "model_type"}).multi_query is True
    refined_web = dict(model_type="RefinedWeb", hidden_size=8192, n_layer=60, n_head=128, n_head_kv=8,
                       multi_query=True, vocab_size=65024)  # fmt: skip
    assert spec_from_config(_family_folder(tmp_path / "rw", refined_web)).kv_heads == 8


def test_santacoders_multi_query_gpt2_config_keeps_one_kv_head(tmp_path: Path) -> None:
    """bigcode/santacoder's config is model_type gpt2 with attention_head_type multiquery (its remote-code
    GPT2CustomConfig): its weights hold one KV head, and TGI serves it so (FlashSantacoder, num_kv_heads=1); its
    n_head (16) KV heads made the cache 16 times too large. A plain GPT-2 keeps a KV head per head."""
    santacoder = dict(model_type="gpt2", n_embd=2048, n_layer=24, n_head=16, n_positions=2048, vocab_size=49280,
                      attention_head_type="multiquery", _name_or_path="bigcode/santacoder")  # fmt: skip
    spec = spec_from_config(_family_folder(tmp_path / "santacoder", santacoder))
    assert (spec.heads, spec.kv_heads, spec.head_dim) == (16, 1, 128)
    multihead = {**santacoder, "attention_head_type": "multihead"}
    assert spec_from_config(_family_folder(tmp_path / "multihead", multihead)).kv_heads == 16


def test_an_old_phi_msft_checkpoints_output_head_is_its_own(tmp_path: Path) -> None:
    """microsoft/phi-2 as phi-msft stores its output head as lm_head.linear (TGI's PhiCausalLMHead loads it there):
    read as tied, the fp16 embeddings a quantized plan keeps were counted once where they are twice."""
    phi = dict(model_type="phi-msft", n_embd=2560, n_layer=32, n_head=32, n_positions=2048, vocab_size=51200,
               tie_word_embeddings=False)  # fmt: skip
    _config(tmp_path, phi)
    _header_only(tmp_path, {"transformer.embd.wte.weight": [51200, 2560], "lm_head.ln.weight": [2560],
                            "lm_head.linear.weight": [51200, 2560], "lm_head.linear.bias": [51200]})  # fmt: skip
    spec = spec_from_config(tmp_path)
    assert not spec.tied_embeddings and spec.embedding_parameters == 2 * 51200 * 2560


def _mpt_7b_tensors() -> dict[str, list[int]]:
    """mosaicml/mpt-7b's tensors (no biases, output head tied to wte): 6,649,286,656 parameters."""
    tensors = {"transformer.wte.weight": [50432, 4096], "transformer.norm_f.weight": [4096]}
    for layer in range(32):
        block = f"transformer.blocks.{layer}"
        tensors |= {f"{block}.norm_1.weight": [4096], f"{block}.attn.Wqkv.weight": [3 * 4096, 4096],
                    f"{block}.attn.out_proj.weight": [4096, 4096], f"{block}.norm_2.weight": [4096],
                    f"{block}.ffn.up_proj.weight": [16384, 4096],
                    f"{block}.ffn.down_proj.weight": [4096, 16384]}  # fmt: skip
    return tensors


def _phi_2_msft_tensors() -> dict[str, list[int]]:
    """microsoft/phi-2's tensors as its phi-msft checkpoint named them (biases everywhere, an output head of its
    own behind a norm): 2,779,683,840 parameters."""
    tensors = {"transformer.embd.wte.weight": [51200, 2560], "lm_head.ln.weight": [2560], "lm_head.ln.bias": [2560],
               "lm_head.linear.weight": [51200, 2560], "lm_head.linear.bias": [51200]}  # fmt: skip
    for layer in range(32):
        block = f"transformer.h.{layer}"
        tensors |= {f"{block}.ln.weight": [2560], f"{block}.ln.bias": [2560],
                    f"{block}.mixer.Wqkv.weight": [3 * 2560, 2560], f"{block}.mixer.Wqkv.bias": [3 * 2560],
                    f"{block}.mixer.out_proj.weight": [2560, 2560], f"{block}.mixer.out_proj.bias": [2560],
                    f"{block}.mlp.fc1.weight": [10240, 2560], f"{block}.mlp.fc1.bias": [10240],
                    f"{block}.mlp.fc2.weight": [2560, 10240], f"{block}.mlp.fc2.bias": [2560]}  # fmt: skip
    return tensors


MPT_7B = dict(FAMILY_CONFIGS["mpt-7b"][0], no_bias=True, _name_or_path="mosaicml/mpt-7b")
PHI_2_MSFT = dict(model_type="phi-msft", n_embd=2560, n_layer=32, n_head=32, n_inner=None, n_positions=2048,
                  rotary_dim=32, vocab_size=51200, tie_word_embeddings=False,
                  _name_or_path="microsoft/phi-2")  # fmt: skip


@pytest.mark.parametrize(
    ("values", "tensors", "gpu", "quantize"),
    [
        (MPT_7B, _mpt_7b_tensors(), "A100-80GB", "eetq"),
        (MPT_7B, _mpt_7b_tensors(), "A100-80GB", "bitsandbytes"),
        (MPT_7B, _mpt_7b_tensors(), "A100-80GB", "bitsandbytes-nf4"),
        (MPT_7B, _mpt_7b_tensors(), "H100", "fp8"),
        (PHI_2_MSFT, _phi_2_msft_tensors(), "T4", "eetq"),
        (PHI_2_MSFT, _phi_2_msft_tensors(), "T4", "bitsandbytes"),
        (PHI_2_MSFT, _phi_2_msft_tensors(), "T4", "bitsandbytes-fp4"),
    ],
)
def test_layers_tgi_reads_past_its_weight_loader_stay_16_bit_when_the_rest_is_quantized(
    tmp_path: Path, values: dict[str, Any], tensors: dict[str, list[int]], gpu: str, quantize: str
) -> None:
    """MPT's fused Wqkv (load_col) and phi-msft's MLP (FastLinear.load) are read as bare tensors past TGI's weight
    loader: under EETQ, FP8 or bitsandbytes they stay 16-bit, beside the embeddings, while the rest is quantized.
    By hand from the checkpoint's own tensors (norms and biases, a few million parameters, are sized with the rest,
    as for every model); sized wholly quantized the plan fell hundreds of MB to GBs short."""
    _config(tmp_path, values)
    _header_only(tmp_path, tensors)
    plan = plan_llm(LlmRequest(gpu, config=tmp_path / "config.json", quantize=quantize))
    counts = {name: shape[0] * (shape[1] if len(shape) > 1 else 1) for name, shape in tensors.items()}
    past_loader = (".attn.Wqkv.", ".mlp.fc1.weight", ".mlp.fc2.weight")  # MPT's Wqkv (no bias), phi-msft's MLP
    embeddings = ("transformer.wte.weight", "transformer.embd.wte.weight", "lm_head.linear.weight")
    sixteen_bit = sum(n for name, n in counts.items() if name in embeddings or any(p in name for p in past_loader))
    quantized = sum(counts.values()) - sixteen_bit
    assert sum(counts.values()) == {"mpt": 6_649_286_656, "phi-msft": 2_779_683_840}[values["model_type"]]
    expected = int(quantized * QUANT_BYTES_PER_PARAM[quantize] + sixteen_bit * 2)
    assert plan["flags"]["--quantize"] == quantize
    assert plan["memory"]["per_gpu"]["weights_bytes"] == expected
    assert plan["weights_bytes_by_quantization"][quantize] == expected
    assert plan["weights_bytes_by_quantization"]["none"] == sum(counts.values()) * 2  # unquantized: all 16-bit
    layer_16_bit = {"mpt": 32 * 3 * 4096 * 4096, "phi-msft": 32 * 2 * 2560 * 10240}[values["model_type"]]
    assert plan["model"]["past_loader_parameters"] == layer_16_bit


def test_only_mpt_and_phi_msft_keep_layers_past_tgis_weight_loader(tmp_path: Path) -> None:
    """MPT's Wqkv bias counts where no_bias is false (MptConfig defaults it to true); phi-msft's MLP is n_inner wide
    where said (4 x n_embd otherwise); any other family keeps none (OPT's, Falcon's layers all go through the
    loader)."""
    mpt = spec_from_config(_family_folder(tmp_path / "mpt", {**MPT_7B, "no_bias": False}))
    assert mpt.past_loader_parameters == 32 * (3 * 4096 * 4096 + 3 * 4096)
    unsaid = {key: value for key, value in MPT_7B.items() if key != "no_bias"}
    assert spec_from_config(_family_folder(tmp_path / "unsaid", unsaid)).past_loader_parameters == 32 * 3 * 4096**2
    narrow = spec_from_config(_family_folder(tmp_path / "phi", {**PHI_2_MSFT, "n_inner": 8192}))
    assert narrow.past_loader_parameters == 32 * 2 * 2560 * 8192
    for name in ("falcon-7b", "bloom-560m", "gpt2"):
        assert spec_from_config(_family_folder(tmp_path / name, FAMILY_CONFIGS[name][0])).past_loader_parameters == 0
    # a checkpoint holding fewer parameters than its config's layers say (1000, _family_folder's) is never sized past
    # its 16-bit size: nothing is left beside the embeddings to keep 16-bit
    assert llm_weight_bytes(mpt, "eetq") == llm_weight_bytes(mpt, "none") == mpt.embedding_parameters * 2


def test_an_mpt_saying_no_bias_null_keeps_its_wqkv_bias_16_bit_as_tgi_loads_it(tmp_path: Path) -> None:
    """TGI's MPT attention loads Wqkv's bias where `not config.no_bias`: a null no_bias (kept so by MptConfig) loads
    it, as false does; only a missing key takes MptConfig's default, true."""
    spec = spec_from_config(_family_folder(tmp_path, {**MPT_7B, "no_bias": None}))
    assert spec.past_loader_parameters == 32 * (3 * 4096 * 4096 + 3 * 4096)
