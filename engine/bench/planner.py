"""What fits on which GPU, and what it costs: cost per request from measured throughput, a memory planner
for our own models, and an LLM serving planner that outputs Text Generation Inference (TGI) settings.

Every figure says where it came from: "measured" (a benchmark on that card), "estimate" (a measurement
scaled by the catalog's peak rates, or arithmetic from the model's shape). Memory is in bytes
(GB = 1e9, GiB = 2**30 where printed).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.bench.catalog import CATALOG, Gpu, PriceBook, catalog_entry
from engine.bench.llms import LLMS, LlmSpec, hub_spec, spec_from_config
from engine.core.errors import InputError
from engine.core.json_text import parse_json

if TYPE_CHECKING:
    from engine.bench.config import CostConfig, LlmRequest, NetworkPlanConfig

CUDA_CONTEXT_BYTES = 800 * 2**20  # CUDA context + cuBLAS/cuDNN workspaces of one PyTorch process (typical)
# The plan's --max-total-tokens when none is asked: the model's context, at most this. TGI up to 2.4.0 defaulted to
# the same; from 2.4.1 its default is the context cut to what the KV cache holds. The launch line always states it.
TGI_DEFAULT_TOTAL_TOKENS = 4096
# TGI's flash path sizes its KV cache from the free memory CUDA reports after a warm-up prefill, less the share of the
# card's CUDA total it keeps back: (1 - cuda_memory_fraction x TGI_WIGGLE_ROOM). So the cache gets fraction x 0.9 of
# the total less all the process holds then: weights, the prefill's peak activations (still cached by torch's
# allocator) and the runtime below. CUDA graphs are captured afterwards, out of the share kept back.
# Read in text-generation-inference's server/text_generation_server: models/flash_causal_lm.py (warmup),
# utils/import_utils.py (get_cuda_free_memory: mem_get_info's free less (1 - fraction) x get_device_properties' total),
# models/globals.py (TGI_WIGGLE_ROOM). The rule of v3.0.0 on; up to 2.4 the 0.9 scaled the free memory instead.
TGI_WIGGLE_ROOM = 0.90  # TGI's default (its env TGI_WIGGLE_ROOM)
TGI_RUNTIME_BYTES = 2**30  # a TGI shard's CUDA context, loaded kernels and cuBLAS workspaces (typical, an estimate)
TGI_NCCL_BYTES = 512 * 2**20  # NCCL's buffers in each shard of a sharded launch (typical, an estimate)
# bitsandbytes' 4-bit weights as TGI's flash path makes them at load from an fp16/bf16 checkpoint (its
# layers/bnb.py Linear4bit: Params4bit(compress_statistics=True, quant_type="nf4" or "fp4"), blocksize left at
# bitsandbytes' default). Read in bitsandbytes' nn/modules.py (Params4bit: blocksize 64) and functional.py
# (quantize_4bit): two 4-bit codes a byte (0.5 bytes a weight); one fp32 absmax per block of 64 weights, which
# compress_statistics ("double quantization") stores as 8-bit codes (1 byte per 64 weights) quantized in blocks of
# 256 absmaxes with an fp32 absmax each (4 bytes per 64 x 256 weights); per tensor an fp32 offset and a 16-entry
# code table (bytes a tensor, nothing per parameter). NF4 and FP4 differ only in their 16 code values.
BNB_4BIT_BLOCK = 64  # weights per absmax (bitsandbytes' Params4bit default)
BNB_NESTED_BLOCK = 256  # absmaxes per fp32 scale when compress_statistics quantizes them (quantize_blockwise)
BNB_4BIT_BYTES_PER_PARAM = 0.5 + 1 / BNB_4BIT_BLOCK + 4 / (BNB_4BIT_BLOCK * BNB_NESTED_BLOCK)  # 0.515869140625
QUANT_BYTES_PER_PARAM = {
    "none": 2.0,  # fp16 / bf16
    "eetq": 1.0 + 2 / 4096,  # int8 weights with a per-row fp16 scale (rows of ~4096)
    # int8 weights with a per-row fp32 scale (bitsandbytes' Int8Params: int8_vectorwise_quant's row_stats are float32)
    "bitsandbytes": 1.0 + 4 / 4096,
    "fp8": 1.0 + 4 / 4096,  # e4m3 weights with a per-row fp32 scale, quantized at load
    # 4-bit weights in groups of 128 with an fp16 scale and a packed 4-bit zero point per group
    "awq": (128 * 0.5 + 2 + 0.5) / 128,
    "gptq": (128 * 0.5 + 2 + 0.5) / 128,
    "bitsandbytes-nf4": BNB_4BIT_BYTES_PER_PARAM,
    "bitsandbytes-fp4": BNB_4BIT_BYTES_PER_PARAM,
}
MARLIN_4BIT = ("awq", "gptq")  # checkpoints quantized ahead of time, run on TGI's Marlin kernels (8.0+)
BNB_4BIT = ("bitsandbytes-nf4", "bitsandbytes-fp4")  # made by TGI's flash path at load, from any checkpoint
FOUR_BIT = MARLIN_4BIT + BNB_4BIT
# Quantized by TGI's flash path at load; its non-flash paths (CausalLM.fallback and, on CUDA,
# TransformersFlashCausalLM.fallback) pass transformers only load_in_8bit=(quantize == "bitsandbytes"), so they load
# these as fp16 (for a model type without a class of its own in TGI, get_model's generic path refuses eetq and
# bitsandbytes-nf4/fp4 first and ignores fp8: TGI_GENERIC_REFUSED_QUANTIZE below).
LOAD_TIME_FLASH_ONLY = ("eetq", "fp8", *BNB_4BIT)
# Model types (config.json's model_type: the outer one of a multimodal config, the one TGI's get_model reads) that
# TGI serves with a flash class of its own (FlashCausalLM, VlmCausalLM, MllamaCausalLM or IdeficsCausalLM) where
# flash attention runs. Read in text-generation-inference's server/text_generation_server/models/__init__.py
# (get_model) at v3.3.7+1 (commit db931fcf42da018a3657580c64bf2720f167f9ab, January 2026; the project is in
# maintenance mode since v3.3.7). Newer families (qwen3, olmo2, ...) are not among them.
TGI_FLASH_MODEL_TYPES = frozenset({
    "baichuan", "cohere", "dbrx", "deepseek_v2", "deepseek_v3", "falcon", "RefinedWeb", "RefinedWebModel",
    "gemma", "gemma2", "gemma3", "gemma3_text", "gpt2", "gpt_bigcode", "gpt_neox", "gptj", "granite", "idefics",
    "idefics2", "idefics3", "llama", "llava_next", "mistral", "mixtral", "mllama", "paligemma", "phi", "phi3",
    "phimoe", "qwen2", "qwen2_5_vl", "qwen2_vl", "starcoder2",
})  # fmt: skip
# Model types get_model gives a class of its own that is not a flash one: they never reach the generic path below.
TGI_OTHER_OWN_MODEL_TYPES = frozenset({"bloom", "llama4", "mamba", "mpt", "opt", "phi-msft", "t5"})
# Of those, the ones get_model serves through TGI's own non-flash classes whatever the card: CausalLM's constructor
# (Bloom, MPT, OPT; phi-msft only without flash attention, TGI_FLASH_REFUSED_MODEL_TYPES), never its fallback() (T5's
# Seq2SeqLM likewise, but an encoder-decoder's config is refused before planning: llms.py). They shard
# (torch.distributed, heads split over the shards: "num_heads must be divisible by num_shards") and load through TGI's
# own weight loader (utils/quantization.py get_loader), so EETQ, FP8, bitsandbytes' 8- and 4-bit, AWQ and GPTQ are made
# or read as on the flash path; but their KV cache is each request's past_key_values, padded and concatenated step by
# step in torch's allocator (Model.warmup sizes no batch: the non-flash memory rule), and they take no --kv-cache-dtype.
# Read in the same commit's models/__init__.py (get_model), models/causal_lm.py and models/seq2seq_lm.py (__init__),
# custom_modeling/{bloom,mpt,opt,phi,t5}_modeling.py. Mamba (no KV cache) and Llama 4 (transformers' class) are planned
# by the card as before.
TGI_CAUSAL_LM_MODEL_TYPES = frozenset({"bloom", "mpt", "opt", "phi-msft"})
# get_model raises "Legacy phi-msft is not supported with Flash Attention" where flash attention loads (8.0+)
TGI_FLASH_REFUSED_MODEL_TYPES = frozenset({"phi-msft"})
# Of TGI_CAUSAL_LM_MODEL_TYPES, the ones whose class breaks when sharded: phi-msft's PhiMHA splits its fused Wqkv over
# the shards (TensorParallelColumnLinear) but views the output with all config.n_head heads, and its MLP (fc1, fc2:
# FastLinear) is loaded whole on every shard (custom_modeling/phi_modeling.py): planned on one GPU
TGI_UNSHARDED_CAUSAL_LM_MODEL_TYPES = frozenset({"phi-msft"})
# Of TGI_CAUSAL_LM_MODEL_TYPES, the ones whose class reads some layers' `.weight` as bare tensors, past the weight
# loader (MPT's fused Wqkv: load_col, which also asserts quantize != "gptq"; phi-msft's MLP: FastLinear.load): an AWQ
# or GPTQ checkpoint, which holds qweight there, does not load (custom_modeling/{mpt,phi}_modeling.py); under EETQ, FP8
# and bitsandbytes those layers stay 16-bit (LlmSpec.past_loader_parameters, which llm_weight_bytes sizes so)
TGI_NO_4BIT_CHECKPOINT_MODEL_TYPES = frozenset({"mpt", "phi-msft"})
# Falcon (and its old RefinedWeb types) with ALiBi (config.json's alibi: true): get_model keeps its flash Falcon class
# (FlashRWForCausalLM, rotary positions) for the others and serves these unsharded through CausalLM.fallback on every
# card: transformers' own class, loaded with load_in_8bit=(quantize == "bitsandbytes") and nothing else (EETQ, FP8
# and bitsandbytes' 4-bit load fp16 weights; nothing in TGI's image loads an AWQ or GPTQ checkpoint there), a padded
# KV cache in torch's allocator, no --kv-cache-dtype. Sharded, it raises "sharded is not supported for this model"
# with flash attention ("Sharded Falcon requires Flash Attention enabled models" without). Read in the same commit's
# models/__init__.py (get_model, the falcon branch) and models/causal_lm.py (CausalLM.fallback).
TGI_ALIBI_FALLBACK_MODEL_TYPES = frozenset({"falcon", "RefinedWeb", "RefinedWebModel"})
# Vision-language model types get_model serves only on the flash path: without flash attention (below 8.0, where
# its transformers fallback cannot load either) it raises "<model> requires Flash Attention enabled models."
TGI_FLASH_ONLY_MODEL_TYPES = frozenset({
    "idefics", "idefics2", "idefics3", "llava_next", "mllama", "paligemma", "qwen2_5_vl", "qwen2_vl",
})  # fmt: skip
# Without flash attention (below 8.0, where importing TGI's flash classes fails, and with them its
# TransformersFlashCausalLM) get_model serves every model type of TGI_FLASH_MODEL_TYPES through the same
# CausalLM.fallback, unsharded ("Sharded <model> requires Flash Attention enabled models"), and so does its generic
# path: transformers' AutoModelForCausalLM with load_in_8bit=(quantize == "bitsandbytes") and nothing else. So EETQ,
# FP8 and bitsandbytes' 4-bit load fp16 weights there (LOAD_TIME_FLASH_ONLY), and an AWQ or GPTQ checkpoint does not
# load at all: transformers reads it only through autoawq, or optimum with auto-gptq or gptqmodel, none of which TGI's
# image installs (server/pyproject.toml, its uv.lock and the Dockerfile: its own AWQ kernels serve its own weight
# loader). Read in the same commit's models/__init__.py (get_model: the else branch of each flash model type's
# `if FLASH_ATTENTION`) and models/causal_lm.py (CausalLM.fallback). These model types are the exceptions: TGI's own
# non-flash classes (CausalLM's constructor, Mamba, Seq2SeqLM) and the vision-language types it refuses there. (phi's
# branch names TransformersFlashCausalLM there, which did not import: a NameError at load; a sharded gpt_neox takes
# TGI's own CausalLM there, but one GPU is planned.)
# get_model's phi branch without flash attention returns TransformersFlashCausalLM.fallback(...), a name imported in a
# try that fails when flash attention's imports do (transformers_flash_causal_lm imports flash_causal_lm): a NameError
# at load where the planner assumes no flash attention (below 8.0). Warned of, not refused: on a T4 TGI's image may
# load flash-attention v1 and serve it on the flash path. Read in the same commit's models/__init__.py.
TGI_BROKEN_FALLBACK_MODEL_TYPES = frozenset({"phi"})
TGI_NOT_FALLBACK_WITHOUT_FLASH_MODEL_TYPES = TGI_CAUSAL_LM_MODEL_TYPES | {"mamba", "t5"} | TGI_FLASH_ONLY_MODEL_TYPES
# Any other model type reaches get_model's generic path, on any card: it refuses these --quantize values first
# ("... is not supported for AutoModel"), whatever the card; then it loads transformers' own class
# (AutoModelForCausalLM) with load_in_8bit=(quantize == "bitsandbytes") and nothing else, so fp8 (and marlin) load
# fp16 weights. With flash attention (8.0+) and a transformers class that supports TGI's attention backend
# (is_backend_compatible) it runs TransformersFlashCausalLM (paged KV cache, sized from free memory as the flash
# path; sharded only by transformers' own tensor-parallel plan, tp_plan="auto"), else CausalLM.fallback (one GPU:
# "sharded is not supported for AutoModel"). Neither passes --kv-cache-dtype on (their fallback() takes none).
# Read in the same commit's models/__init__.py, models/transformers_flash_causal_lm.py and models/causal_lm.py.
TGI_GENERIC_REFUSED_QUANTIZE = ("awq", "gptq", "bitsandbytes-nf4", "bitsandbytes-fp4", "eetq")  # and exl2
TGI_DEFAULT_CONCURRENT_REQUESTS = 128  # the launcher's --max-concurrent-requests when none is given
# TGI's --kv-cache-dtype: the model's own type, or an 8-bit float, which its flash path's attention (flashinfer or
# paged, on CUDA) stores and its non-flash path (transformers) ignores. Read in launcher/src/main.rs (KVCacheDtype)
# and server/text_generation_server/layers/attention/kv_cache.py (KVCache).
KV_CACHE_DTYPES = ("auto", "fp8_e4m3fn", "fp8_e5m2")
MODEL_ID_PLACEHOLDER = "MODEL-ID"


class PlanError(InputError):
    """The request cannot be planned; the message says why and what is accepted."""


# ---------------------------------------------------------------------------------------------- cost


def scaled_throughput(measured: float, measured_on: Gpu, target: Gpu, precision: str) -> float | None:
    """A measurement moved to another card by the ratio of their peak rates at that precision (a compute-bound
    estimate; memory-bound work scales with bandwidth instead, so treat it as a first guess)."""
    try:
        a, b = measured_on.peak(precision), target.peak(precision)
    except KeyError:
        return None
    if not a or not b:
        return None
    return measured * b / a


CPU_ROW = "CPU (measured)"  # the cost table's row of the CPU machine itself


def cost_table(
    throughput: float,
    precision: str,
    measured_on: Gpu | None,
    prices: PriceBook,
    samples_per_request: float = 1.0,
    cpu_price_per_hour: float | None = None,
) -> list[dict[str, Any]]:
    """Cost per 1000 requests and requests per $10 on each priced GPU. `throughput` is samples/s measured
    on `measured_on` (None for the CPU: then no GPU figure is estimated, and the CPU machine itself is priced at
    `cpu_price_per_hour` where given); other cards are scaled estimates. A request is `samples_per_request` samples
    (e.g. 250 frames for 10 s of lip-synced video)."""
    if throughput <= 0 or samples_per_request <= 0:
        raise PlanError("throughput and samples per request must be positive")
    if cpu_price_per_hour is not None and measured_on is not None:
        raise PlanError("a CPU price prices a throughput measured on the CPU; a card's price goes in prices.json")
    rows = []
    if measured_on is None and cpu_price_per_hour is not None:  # a CPU machine against the cards' prices
        rows.append(_priced({"gpu": CPU_ROW, "price_per_hour": cpu_price_per_hour, "price_source": "given",
                             "basis": "measured", "samples_per_s": throughput}, samples_per_request))  # fmt: skip
    if measured_on is not None and measured_on.key == "detected":  # the measured card itself, though uncatalogued
        rows.append({
            "gpu": measured_on.name, "price_per_hour": None, "price_source": "",
            "basis": "measured; not in the catalog (no price, no rates to scale other cards by)",
            "samples_per_s": throughput, "requests_per_s": throughput / samples_per_request,
            "cost_per_1000_requests": None, "requests_per_10_usd": None,
        })  # fmt: skip
    for key, gpu in CATALOG.items():
        price = prices.prices.get(key)
        measured = measured_on is not None and measured_on.key == key
        if price is None and not measured:
            continue
        if price is None:  # the measured card is shown, with what it lacks
            rate, basis = throughput, "measured; no price for this card (give one in prices.json)"
        elif measured_on is None:
            rate, basis = None, "not estimated: measured on the CPU"
        elif measured:
            rate, basis = throughput, "measured"
        elif measured_on.key == "detected":
            rate, basis = None, "not estimated: the measured card has no catalog rates"
        else:
            rate, basis = scaled_throughput(throughput, measured_on, gpu, precision), "estimate"
        row = {"gpu": key, "price_per_hour": price, "price_source": prices.sources.get(key, ""), "basis": basis,
               "samples_per_s": rate}  # fmt: skip
        rows.append(_priced(row, samples_per_request))
    return rows


def unpriced_cards(prices: PriceBook, measured_on: Gpu | None = None) -> list[str]:
    """The catalog's cards that cost_table leaves out for want of a price (the measured card is shown even so): a
    cost table says which, so that a missing card reads as unpriced, not as forgotten."""
    measured = measured_on.key if measured_on is not None else None
    return [key for key in CATALOG if key not in prices.prices and key != measured]


def _priced(row: dict[str, Any], samples_per_request: float) -> dict[str, Any]:
    """The row with its requests per second, cost per 1000 requests and requests per $10 (None where its rate or
    its price is missing)."""
    rate, price = row["samples_per_s"], row["price_per_hour"]
    per_s = rate / samples_per_request if rate else None
    return {
        **row,
        "requests_per_s": per_s,
        "cost_per_1000_requests": price / (per_s * 3600) * 1000 if per_s and price else None,
        "requests_per_10_usd": 10 / price * per_s * 3600 if per_s and price else None,
    }


# ---------------------------------------------------------------------------------------------- our models


@dataclass
class MemoryFit:
    gpu: str  # the card planned for, as the catalog or NVML names it
    weights_bytes: int
    activation_bytes_per_sample: int
    overhead_bytes: int
    budget_bytes: int  # memory fraction x the card's total as CUDA reports it
    max_batch: int  # the largest batch that fits (0: not even one)
    recommended_batch: int  # a power of two at most max_batch, capped by the request
    precision: str
    recommended_precision: str
    gpus_for_target: int | None
    predicted_bytes: int  # at the recommended batch
    basis: str
    warnings: list[str] = field(default_factory=list)
    capped: bool = False  # more than max_batch would fit: it is the most the plan looks at, not the memory's limit

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def max_batch_text(self) -> str:
        return f"{self.max_batch} (the most planned; more would fit)" if self.capped else str(self.max_batch)


def calibrate_activations(peaks: list[tuple[int, int]]) -> tuple[int, int]:
    """(bytes per sample, fixed bytes) by least squares over (batch, peak allocator bytes) pairs."""
    if len({b for b, _ in peaks}) < 2:
        raise PlanError("calibration needs peaks at two or more batch sizes")
    n = len(peaks)
    mean_b = sum(b for b, _ in peaks) / n
    mean_m = sum(m for _, m in peaks) / n
    var = sum((b - mean_b) ** 2 for b, _ in peaks)
    slope = sum((b - mean_b) * (m - mean_m) for b, m in peaks) / var
    return max(0, round(slope)), max(0, round(mean_m - slope * mean_b))


def calibration_from_report(report: dict[str, Any], precision: str) -> tuple[int, int] | None:
    """(bytes per sample, fixed bytes) from a GPU sweep's eager rows at this precision, or None when the
    sweep has fewer than two such batch sizes. Fixed bytes are what the allocator held beyond the batch:
    weights and persistent workspaces (the CUDA context is not in the allocator and is added separately)."""
    rows = report.get("results", [])
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise PlanError("the calibration report's results must be a list of rows (a bench --json report)")
    highest: dict[int, int] = {}  # per batch, its hungriest row: rows differ by layout and cuDNN setting
    for r in rows:
        if (
            r.get("status") == "ok"
            and r.get("device") == "cuda"
            and r.get("runtime") == "eager"
            and r.get("precision") == precision
            and _count(r.get("batch"))
            and _count(r.get("peak_allocated_bytes"))
        ):
            highest[r["batch"]] = max(highest.get(r["batch"], 0), r["peak_allocated_bytes"])
    if len(highest) < 2:
        return None
    return calibrate_activations(sorted(highest.items()))


def _check_calibration_source(report: Any, model: str) -> None:
    """A calibration report is a bench --json report of this very network: another's peaks would size it wrongly."""
    if not isinstance(report, dict):
        raise PlanError("the calibration report must be a JSON object (a bench --json report)")
    measured = report.get("model", {}).get("name") if isinstance(report.get("model"), dict) else None
    if measured is None:  # a report of unknown origin: its peaks may be any network's
        raise PlanError(
            "the calibration report does not say which network it measured (no model.name): give a bench --json "
            f"report of {model!r}"
        )
    if measured != model:
        raise PlanError(f"the calibration report measured {measured!r}, not {model!r}")


def _count(value: Any) -> bool:
    """A positive whole number as a report holds one (a batch, a byte count); not a bool, text, NaN or infinity."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63


def plan_model_memory(
    gpu: Gpu,
    weights_bytes: int,
    activation_bytes_per_sample: int,
    precision: str = "fp16",
    memory_fraction: float = 0.9,
    max_batch: int = 4096,
    target_samples_per_s: float | None = None,
    samples_per_s_per_gpu: float | None = None,
    basis: str = "estimate",
) -> MemoryFit:
    """Batch size and GPU count for one of our networks: weights + batch x activations + the CUDA context
    must stay under memory_fraction of the card."""
    if not 0 < memory_fraction <= 1:
        raise PlanError(f"memory fraction must be in (0, 1], got {memory_fraction}")
    warnings = []
    if precision in ("bf16", "tf32") and not gpu.supports(precision):
        major, minor = gpu.compute_capability
        instead = "use fp16" if precision == "bf16" else "tf32 runs as plain fp32 there"
        warnings.append(f"{gpu.name} (compute capability {major}.{minor}) has no {precision}: {instead}")
    if precision in ("fp16", "bf16") and not gpu.supports("fp16-tensor-cores"):
        warnings.append(f"{gpu.name} has no tensor cores: fp16 saves memory but not much time")
    budget = int(gpu.memory_bytes * memory_fraction)
    free = budget - weights_bytes - CUDA_CONTEXT_BYTES
    per_sample = max(1, activation_bytes_per_sample)  # no activations: as many as max_batch, when the weights fit
    room = free // per_sample if activation_bytes_per_sample or free < 0 else math.inf
    capped = room > max_batch
    fits = int(max(0, min(room, max_batch)))
    recommended = 2 ** int(math.log2(fits)) if fits >= 1 else 0
    if fits == 0:
        warnings.append(f"does not fit: weights and one sample need more than {budget / 2**30:.1f} GiB")
    gpus = None
    if target_samples_per_s and samples_per_s_per_gpu and fits:  # none fits: no count of cards helps
        # rounded to 9 places first: 99.9 / 33.3 is 3.0000000000000004 in floating point, which is 3 cards, not 4
        gpus = max(1, math.ceil(round(target_samples_per_s / samples_per_s_per_gpu, 9)))
    predicted = weights_bytes + CUDA_CONTEXT_BYTES + recommended * activation_bytes_per_sample
    # fp16 where tensor cores exist (Wav2Lip's fp16 output is within 0.13 grey levels of fp32, bf16 8x further);
    # fp32 on cards without them, where fp16 saves memory but little time.
    best = "fp16" if gpu.supports("fp16-tensor-cores") else "fp32"
    return MemoryFit(
        gpu.name, weights_bytes, activation_bytes_per_sample, CUDA_CONTEXT_BYTES, budget, fits, recommended, precision,
        best, gpus, predicted, basis, warnings, capped,
    )  # fmt: skip


CALIBRATION_REPORT = "a GPU sweep's JSON report (`avatarbench bench --json`, or the benchmark tab's Report (JSON))"


def _calibration_report(path: Path) -> Any:
    """The calibrate file's JSON; a file that is not JSON text (an image, say) is refused saying what is expected
    ("'utf-8' codec can't decode byte 0xff" said neither)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PlanError(f"calibrate: {path.name} cannot be read ({exc.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PlanError(f"calibrate: {path.name} is not text, so not a sweep's report: give {CALIBRATION_REPORT}"
                        ) from None  # fmt: skip
    try:
        return parse_json(text, f"calibrate: {path.name}")
    except InputError as exc:
        raise PlanError(f"{exc}; calibrate takes {CALIBRATION_REPORT}") from None


ESTIMATE_BASIS = "estimate: every layer output of one sample kept (an upper bound; calibrate with a GPU sweep)"


def plan_network(
    config: NetworkPlanConfig, cache_dir: str | Path, report: dict[str, Any] | None = None, card: Gpu | None = None
) -> tuple[str, MemoryFit]:
    """(the network's title, its memory plan) for one of our networks on a card. `report` is a GPU sweep's report
    (its allocator peaks calibrate the activations; the file named by config.calibrate when not given); `card`
    stands in for the catalog's entry (the detected GPU)."""
    from engine.bench.workloads import builtin_model, memory_profile

    config = config.checked()
    gpu = card or catalog_entry(config.gpu)
    if gpu is None:
        raise PlanError(f"unknown GPU {config.gpu!r}; known: {', '.join(CATALOG)}")
    if report is None and config.calibrate is not None:
        report = _calibration_report(Path(config.calibrate))
    model = builtin_model(config.model, cache_dir)
    if report is not None:
        _check_calibration_source(report, config.model)
    calibrated = calibration_from_report(report, config.precision) if report is not None else None
    if report is not None and calibrated is None:
        raise PlanError(f"the calibration report has no GPU eager {config.precision} rows at two batch sizes")
    if calibrated:
        (activations, weights), basis = calibrated, "calibrated from a GPU sweep (allocator peaks by batch)"
        if not activations:
            raise PlanError("the calibration report's peaks do not grow with the batch: they cannot size one")
    else:
        (weights, activations), basis = memory_profile(model, config.precision), ESTIMATE_BASIS
    fit = plan_model_memory(
        gpu, weights, activations, config.precision, config.memory_fraction,
        target_samples_per_s=config.target_throughput, samples_per_s_per_gpu=config.throughput_per_gpu, basis=basis,
    )  # fmt: skip
    return model.title, fit


def cost_for(config: CostConfig, prices: PriceBook) -> list[dict[str, Any]]:
    """cost_table for a checked request: measured_on is "cpu" or a catalog key."""
    config = config.checked()
    measured_on = None if config.measured_on == "cpu" else CATALOG[config.measured_on]
    return cost_table(config.throughput, config.precision, measured_on, prices, config.samples_per_request,
                      config.cpu_price_per_hour)  # fmt: skip


# ---------------------------------------------------------------------------------------------- LLMs


def llm_weight_bytes(spec: LlmSpec, quantize: str = "none") -> int:
    """The weights' bytes under `quantize`: the embeddings, and the layers TGI's class reads past its weight loader
    (spec.past_loader_parameters: MPT's Wqkv, phi-msft's MLP), stay 16-bit; the rest takes the quantizer's bytes."""
    if quantize not in QUANT_BYTES_PER_PARAM:
        raise PlanError(f"quantize {quantize!r} is not one of {', '.join(QUANT_BYTES_PER_PARAM)}")
    embed = spec.embedding_parameters
    body = max(0.0, spec.parameters - embed)
    sixteen_bit = 0.0 if quantize == "none" else min(body, spec.past_loader_parameters)
    return int((body - sixteen_bit) * QUANT_BYTES_PER_PARAM[quantize] + (embed + sixteen_bit) * 2)


def _prefill_bytes(spec: LlmSpec, tokens: int, shards: int) -> int:
    """Peak activations of a prefill pass: hidden states and attention/MLP temporaries (about 12 hidden-sized
    fp16 vectors per token across the widest layer), split across shards, plus fp32 logits of the last tokens."""
    return int(tokens * spec.hidden * 2 * 12 / shards + spec.vocab * 4 * min(tokens, 256))


def tgi_runtime_bytes(shards: int) -> int:
    """What a TGI shard holds besides weights and activations: the runtime, and NCCL's buffers when sharded."""
    return TGI_RUNTIME_BYTES + (TGI_NCCL_BYTES if shards > 1 else 0)


def tgi_budget_bytes(gpu: Gpu, memory_fraction: float, flash: bool, runtime: int) -> int:
    """What weights, runtime, activations and KV cache may take together on one of TGI's GPUs. The flash path keeps
    (1 - fraction x 0.9) of the card's CUDA total back when it sizes its cache; the non-flash path sizes nothing, and
    torch's allocator stops at fraction x total (--cuda-memory-fraction), with the runtime outside it."""
    total = gpu.memory_bytes
    if flash:
        return int(total * memory_fraction * TGI_WIGGLE_ROOM)
    return int(min(total * memory_fraction + runtime, total))


def _fit(
    spec: LlmSpec,
    gpu: Gpu,
    req: LlmRequest,
    shards: int,
    quantize: str,
    prefill_tokens: int,
    kv_dtype_bytes: int,
    path: TgiPath,
) -> dict[str, Any]:
    """One launch tried, on the path TGI serves the model by (its budget: a paged KV cache sized from the free
    memory, or each request's padded cache in torch's allocator)."""
    runtime = tgi_runtime_bytes(shards)
    per_gpu = tgi_budget_bytes(gpu, req.memory_fraction, path.paged, runtime)
    weights = llm_weight_bytes(spec, quantize) / shards
    prefill = _prefill_bytes(spec, prefill_tokens, shards)
    # what TGI measures as free after its warm-up; the warm-up's own KV blocks (fewer tokens than a fitting plan
    # needs) are counted back in by TGI, so they change nothing here
    kv_budget = per_gpu - weights - runtime - prefill
    kv_per_token = spec.kv_bytes_per_token(kv_dtype_bytes) / shards
    capacity = int(kv_budget // kv_per_token) if kv_budget > 0 else 0
    needed = req.max_total_tokens * req.concurrent_requests
    return {
        "shards": shards,
        "quantize": quantize,
        "per_gpu": {
            "card_total_bytes": gpu.memory_bytes,  # as CUDA reports it
            "budget_bytes": per_gpu,
            "weights_bytes": int(weights),
            "runtime_bytes": runtime,
            "prefill_activation_bytes": prefill,
            "kv_cache_bytes": max(0, int(kv_budget)),
        },
        "kv_bytes_per_token": int(spec.kv_bytes_per_token(kv_dtype_bytes)),
        "kv_token_capacity": capacity,
        "kv_tokens_needed": needed,
        "fits": capacity >= needed,
    }


def _what_would_fit(req: LlmRequest, spec: LlmSpec, gpu: Gpu, path: TgiPath, tried: list[dict[str, Any]]) -> str:
    """The changes that could make a deployment that does not fit fit: only those this card and model allow on the
    path TGI serves it by (more GPUs only where TGI can shard further; 4-bit weights only where they were not tried
    and can run, never on TGI's generic path, which refuses them; an 8-bit KV cache only on its own flash path)."""
    more = [s for s in (2, 4, 8) if s > req.count and spec.kv_heads % s == 0 and spec.heads % s == 0]
    advice = ["a larger GPU"]
    if path.shards_heads and more:
        advice.append(f"more GPUs (--count {more[0]} shards it further)")
    if not path.generic and not spec.checkpoint_quantize and not any(f["quantize"] in FOUR_BIT for f in tried):
        # AWQ from a checkpoint quantized so (Marlin, 8.0+); bitsandbytes-nf4 from this one, at load, where TGI's
        # own weight loader runs (its flash path and its own non-flash classes; transformers' loading ignores it)
        four_bit = (["--quantize awq"] if gpu.supports("marlin") and path.awq_loads else []) + (
            ["bitsandbytes-nf4 to quantize this checkpoint at load"] if path.own_loader else []
        )
        if four_bit:
            advice.append(f"4-bit weights ({', or '.join(four_bit)})")
    if path.flash_path and req.kv_cache_dtype == "auto":  # e4m3fn: the type TGI picks for a checkpoint's 8-bit cache
        advice.append("an 8-bit KV cache (--kv-cache-dtype fp8_e4m3fn)")
    if req.concurrent_requests > 1:
        advice.append("fewer concurrent requests")
    return "try " + ", ".join(advice) + " or shorter sequences"


def tgi_generic_path(spec: LlmSpec) -> bool:
    """Whether TGI serves the model through get_model's generic path (transformers' own class), having no class of
    its own for its model type. A spec that does not say its model type keeps the card's path."""
    own = TGI_FLASH_MODEL_TYPES | TGI_OTHER_OWN_MODEL_TYPES
    return bool(spec.model_type) and spec.model_type not in own


@dataclass(frozen=True)
class TgiPath:
    """How TGI serves a model on a card: which of get_model's classes runs it, and so what the plan may ask of it
    (read in text-generation-inference's models/__init__.py, get_model; see the tables above)."""

    flash_attention: bool  # the card runs flash attention (compute capability 8.0+)
    generic: bool  # get_model's generic path: transformers' own class, TGI having no class for the model type
    causal_lm: bool  # TGI's own non-flash class on every card (CausalLM's constructor: TGI_CAUSAL_LM_MODEL_TYPES)
    paged: bool  # a KV cache preallocated from the free memory (a flash class, or TransformersFlashCausalLM)
    flash_path: bool  # TGI's own flash class: it alone honours --kv-cache-dtype
    own_loader: bool  # TGI's weight loader: EETQ, FP8 and bitsandbytes' 4-bit made at load, AWQ and GPTQ read
    shards_heads: bool  # TGI splits the heads over --num-shard GPUs (else one GPU per replica)
    awq_loads: bool  # TGI's class for the model type loads an AWQ or GPTQ checkpoint
    # get_model's CausalLM.fallback: transformers' own class, load_in_8bit alone (no AWQ or GPTQ checkpoint loads),
    # a padded KV cache, one GPU. A Falcon with ALiBi on every card; without flash attention, every model type but
    # those TGI_NOT_FALLBACK_WITHOUT_FLASH_MODEL_TYPES names (the generic path's included)
    fallback: bool
    alibi_fallback: bool  # why it is the fallback on an 8.0+ card too: a Falcon with ALiBi (never sharded there)

    @classmethod
    def of(cls, spec: LlmSpec, gpu: Gpu) -> TgiPath:
        """The path get_model takes for this model on this card."""
        flash = gpu.supports("flash-attention")
        generic = tgi_generic_path(spec)
        causal_lm = spec.model_type in TGI_CAUSAL_LM_MODEL_TYPES
        alibi_fallback = spec.alibi and spec.model_type in TGI_ALIBI_FALLBACK_MODEL_TYPES
        fallback = alibi_fallback or (not flash and spec.model_type not in TGI_NOT_FALLBACK_WITHOUT_FLASH_MODEL_TYPES)
        # a KV cache preallocated from the free memory (flash or generic path)
        paged = flash and not causal_lm and not fallback
        flash_path = paged and not generic
        return cls(
            flash_attention=flash,
            generic=generic,
            causal_lm=causal_lm,
            paged=paged,
            flash_path=flash_path,
            own_loader=flash_path or causal_lm,
            # phi-msft's class breaks when sharded (TGI_UNSHARDED_CAUSAL_LM_MODEL_TYPES)
            shards_heads=flash_path or (causal_lm and spec.model_type not in TGI_UNSHARDED_CAUSAL_LM_MODEL_TYPES),
            awq_loads=spec.model_type not in TGI_NO_4BIT_CHECKPOINT_MODEL_TYPES and not fallback,
            fallback=fallback,
            alibi_fallback=alibi_fallback,
        )


def _refuse_generic_quantize(spec: LlmSpec, quantize: str) -> None:
    """TGI's generic path refuses AWQ, GPTQ, EETQ and bitsandbytes' 4-bit before it loads anything: say so here,
    naming what it does load."""
    if quantize not in TGI_GENERIC_REFUSED_QUANTIZE:
        return
    what = f"a checkpoint quantized with {quantize}" if spec.checkpoint_quantize else f"--quantize {quantize}"
    raise PlanError(
        f"TGI has no model class of its own for model type {spec.model_type!r} ({spec.name or spec.key}): its "
        f"generic path (transformers' class) refuses {what} ({quantize} is not supported for AutoModel); it loads "
        "16-bit weights (quantize none or auto) or 8-bit bitsandbytes (quantize bitsandbytes)"
    )


def _refuse_fallback_4bit(spec: LlmSpec, gpu: Gpu, path: TgiPath, quantize: str) -> None:
    """CausalLM.fallback loads no AWQ or GPTQ checkpoint (transformers has no loader for them in TGI's image): say
    why the model takes that path on this card, and what loads there."""
    title = spec.name or spec.key
    what = f"a checkpoint quantized with {quantize}" if spec.checkpoint_quantize else f"--quantize {quantize}"
    if path.alibi_fallback:
        raise PlanError(
            f"TGI serves {title} (model type {spec.model_type!r} with alibi: true) only through transformers' own "
            "class (CausalLM.fallback: its flash Falcon class is for rotary positions), which loads no "
            f"{quantize.upper()} weights: {what} cannot be planned; plan a 16-bit checkpoint with quantize auto, none "
            "or bitsandbytes (8-bit, the only quantization that path makes)"
        )
    major, minor = gpu.compute_capability
    model_type = f" (model type {spec.model_type!r})" if spec.model_type else ""
    raise PlanError(
        f"TGI serves {title}{model_type} on {gpu.name} (compute capability {major}.{minor}; flash attention needs "
        f"8.0+) only through transformers' own class (CausalLM.fallback), which loads no {quantize.upper()} weights "
        f"(TGI's image has no AWQ or GPTQ loader for transformers): {what} cannot be planned there; plan a 16-bit "
        "checkpoint with quantize auto, none or bitsandbytes (8-bit, the only quantization that path makes: eetq, fp8 "
        "and bitsandbytes-nf4/fp4 load as fp16 there), or an 8.0+ card (A10G, L4, A100, H100, ...)"
    )


def _llm_spec(req: LlmRequest) -> LlmSpec:
    """The model asked for: a preset, a Hub model id or a config.json."""
    if req.llm in LLMS:
        return LLMS[req.llm]
    return hub_spec(req.llm) if req.llm else spec_from_config(req.config)


def plan_llm(req: LlmRequest, card: Gpu | None = None) -> dict[str, Any]:
    """Whether a TGI deployment fits, memory by part, the launch flags and the reasons and warnings. `card` stands in
    for the catalog's entry (the detected GPU); req.gpu then only names it."""
    req = req.checked()
    gpu = card or catalog_entry(req.gpu)
    if gpu is None:
        raise PlanError(f"unknown GPU {req.gpu!r}; known: {', '.join(CATALOG)}")
    spec = _llm_spec(req)
    title = spec.name or spec.key
    path = TgiPath.of(spec, gpu)
    if path.generic:
        _refuse_generic_quantize(spec, spec.checkpoint_quantize or req.quantize)
    if path.fallback and (spec.checkpoint_quantize or req.quantize) in MARLIN_4BIT:
        _refuse_fallback_4bit(spec, gpu, path, spec.checkpoint_quantize or req.quantize)
    if not path.awq_loads and (spec.checkpoint_quantize or req.quantize) in MARLIN_4BIT:
        quantize = spec.checkpoint_quantize or req.quantize
        what = f"a checkpoint quantized with {quantize}" if spec.checkpoint_quantize else f"--quantize {quantize}"
        raise PlanError(
            f"TGI's own class for model type {spec.model_type!r} ({title}) cannot load {what}: it reads some layers "
            f"as 16-bit tensors, past its weight loader, where an {quantize.upper()} checkpoint holds none; plan a "
            "16-bit checkpoint (quantize auto, none, or one TGI makes at load: eetq, fp8, bitsandbytes)"
        )
    if spec.checkpoint_quantize:  # its weights are stored quantized: TGI loads them so, whatever else is asked
        if req.quantize not in ("auto", spec.checkpoint_quantize):
            raise PlanError(f"{title} is a checkpoint quantized with {spec.checkpoint_quantize} ahead of time, which "
                            f"TGI loads as it is: give quantize auto or {spec.checkpoint_quantize}")  # fmt: skip
        req = replace(req, quantize=spec.checkpoint_quantize)
    if req.max_total_tokens is None:  # the context, at most 4096 (TGI_DEFAULT_TOTAL_TOKENS)
        context = TGI_DEFAULT_TOTAL_TOKENS if spec.max_positions is None else spec.max_positions
        req = replace(req, max_total_tokens=min(context, TGI_DEFAULT_TOTAL_TOKENS))
    max_input = req.max_input_tokens or req.max_total_tokens - 1
    if not 1 <= max_input < req.max_total_tokens:
        raise PlanError(
            f"--max-input-tokens {max_input} must be below --max-total-tokens {req.max_total_tokens}: a request "
            "generates at least one token after its prompt"
        )
    warnings: list[str] = []
    reasons: list[str] = []
    if spec.model_type in TGI_FLASH_ONLY_MODEL_TYPES and not path.flash_attention:
        major, minor = gpu.compute_capability
        raise PlanError(
            f"TGI serves model type {spec.model_type!r} ({title}) only on its flash path, which needs compute "
            f"capability 8.0+; {gpu.name} has {major}.{minor} (TGI stops at load: requires Flash Attention enabled "
            "models): plan it on an 8.0+ card (A10G, L4, A100, H100, ...)"
        )
    if spec.model_type in TGI_FLASH_REFUSED_MODEL_TYPES and path.flash_attention:
        major, minor = gpu.compute_capability
        raise PlanError(
            f"TGI refuses model type {spec.model_type!r} ({title}) where flash attention runs (Legacy phi-msft is not "
            "supported with Flash Attention): it serves it only below compute capability 8.0, through its non-flash "
            f"CausalLM; {gpu.name} has {major}.{minor}: plan it on a T4 or V100, or use a checkpoint converted to "
            "transformers' phi"
        )
    if spec.model_type in TGI_BROKEN_FALLBACK_MODEL_TYPES and not path.flash_attention:
        warnings.append(
            f"TGI's {spec.model_type!r} branch without flash attention calls TransformersFlashCausalLM.fallback, "
            "which is not importable there (its import fails with flash attention's): TGI may stop at load with a "
            f"NameError on {gpu.name}; it runs {title} where its flash attention loads (8.0+, or a T4 where TGI's "
            "flash-attention v1 loads)"
        )
    if spec.max_positions is None:  # ALiBi (BLOOM): TGI's launcher finds no max_position_embeddings to cap it by
        warnings.append(
            f"{title} has no position table (ALiBi) and its config sets no context: --max-total-tokens "
            f"{req.max_total_tokens} is planned as given ({TGI_DEFAULT_TOTAL_TOKENS} where none is asked); a length "
            "beyond the one it was trained on is not checked"
        )
    elif req.max_total_tokens > spec.max_positions:
        warnings.append(
            f"--max-total-tokens {req.max_total_tokens} exceeds {title}'s context of {spec.max_positions} tokens"
        )
    if path.generic:
        warnings.append(
            f"TGI has no model class of its own for model type {spec.model_type!r}: it serves {title} through "
            "transformers' class (only where transformers maps the type to a causal LM; TGI refuses it otherwise), "
            + (
                "as TransformersFlashCausalLM where that class supports TGI's attention backend, else "
                "CausalLM.fallback (padded KV cache; --max-batch-total-tokens is stated for it and ignored by the "
                "other); "
                if path.flash_attention
                else "as CausalLM.fallback; "
            )
            + "it quantizes only with 8-bit bitsandbytes and is planned on one GPU (--num-shard 1): "
            + (
                "TGI shards it only through transformers' tensor-parallel plan, where its class has one"
                if path.flash_attention
                else "CausalLM.fallback does not shard"
            )
        )
    if path.causal_lm:
        warnings.append(
            f"TGI serves model type {spec.model_type!r} ({title}) through its own non-flash CausalLM class on every "
            "card: no flash or paged attention, each request's KV cache is padded and grown in "
            "torch's allocator rather than preallocated from free memory (--max-batch-total-tokens is stated), and "
            "--kv-cache-dtype does not apply; "
            + (
                "it shards over GPUs and quantizes at load as the flash path does"
                if path.shards_heads
                else "it quantizes at load as the flash path does but is planned on one GPU (--num-shard 1): its "
                "attention keeps every head on each shard, so sharding breaks it"
            )
        )
    elif path.alibi_fallback:
        warnings.append(
            f"TGI serves {title} (model type {spec.model_type!r} with alibi: true) through transformers' own class on "
            "every card (CausalLM.fallback: its flash Falcon class is for rotary positions): no flash or paged "
            "attention, each request's KV cache is padded and grown in torch's allocator (--max-batch-total-tokens is "
            "stated), --kv-cache-dtype does not apply, it quantizes only with 8-bit bitsandbytes, and it is planned "
            "on one GPU (--num-shard 1): TGI refuses it sharded ("
            + (
                "sharded is not supported for this model"
                if path.flash_attention
                else "Sharded Falcon requires Flash Attention enabled models"
            )
            + ")"
        )
    elif not path.flash_attention:
        warnings.append(
            f"{gpu.name} has compute capability {gpu.compute_capability[0]}.{gpu.compute_capability[1]}: flash "
            "attention and paged attention need 8.0+, so TGI runs the slower non-flash path, cannot shard "
            "(one GPU only) and pads the KV cache per request"
        )
    # TGI's non-flash path (CausalLM.fallback, transformers' loading) honours only 8-bit bitsandbytes: eetq, fp8 and
    # bitsandbytes-nf4/fp4 are ignored there. EETQ's kernels stop at 8.9; above, FP8 (TGI: "works on H100 and
    # above") beats the deprecated bitsandbytes, which also turns TGI's CUDA graphs off (its launcher turns them off
    # for 8-bit bitsandbytes only: nf4 and fp4 keep them, captured out of the share kept back, as the others).
    int8 = "bitsandbytes"
    # TGI's generic path (transformers' loading) makes 8-bit bitsandbytes alone: EETQ refused above, FP8 ignored
    if path.own_loader and gpu.supports("eetq"):
        int8 = "eetq"
    elif path.own_loader and gpu.supports("fp8"):
        int8 = "fp8"
    # eetq, fp8 or bitsandbytes-nf4/fp4 asked for on the non-flash path loads fp16 weights (warned below): sized and
    # launched as what runs
    transformers_loads = not path.own_loader  # load-time quantizers other than 8-bit bitsandbytes are ignored
    asked = "none" if req.quantize in LOAD_TIME_FLASH_ONLY and transformers_loads else req.quantize
    # auto's 4-bit is AWQ, not bitsandbytes-nf4: where nf4 runs (the flash path, 8.0+) Marlin runs too, AWQ takes about
    # as many bytes (0.5195 a weight against 0.5159: nf4 would fit only what misses AWQ by under 1% of the weights),
    # and TGI's launcher calls bitsandbytes 4-bit "much slower to run than the native f16"; where Marlin is missing
    # TGI runs its non-flash path, which ignores nf4. AWQ's placeholder warning names nf4 for a checkpoint without AWQ.
    quant_options = ["none", int8, "awq"] if req.quantize == "auto" else [asked]
    if (path.generic or not path.awq_loads) and req.quantize == "auto":  # AWQ refused, or not loaded, there
        quant_options = ["none", int8]
    kv_dtype_bytes = 1 if req.kv_cache_dtype != "auto" and path.flash_path else 2
    if req.kv_cache_dtype != "auto" and kv_dtype_bytes == 2:
        warnings.append(
            f"--kv-cache-dtype {req.kv_cache_dtype} is ignored by TGI's "
            + ("generic path (transformers' class)" if path.generic else "non-flash path")
            + ": the KV cache is planned, and launched, in the model's 16-bit type"
        )
    if req.quantize in MARLIN_4BIT and not gpu.supports("marlin"):
        warnings.append(
            f"{req.quantize.upper()} in current TGI runs on the Marlin kernels, which need compute capability "
            f"8.0+; {gpu.name} may not run it"
        )
    # the kernels' cards matter only where they run: transformers' loading ignores --quantize eetq and fp8 (warned
    # below), but an FP8 checkpoint is still read there by transformers' own FP8 quantizer, which wants 8.9+ too
    if req.quantize == "eetq" and not gpu.supports("eetq") and not transformers_loads:
        warnings.append(f"EETQ's kernels cover compute capability 7.0 to 8.9; {gpu.name} may not run it")
    if req.quantize == "fp8" and not gpu.supports("fp8") and (not transformers_loads or spec.checkpoint_quantize):
        warnings.append(f"FP8 weights need FP8 tensor cores (compute capability 8.9+); {gpu.name} may not run it")
    if req.quantize in LOAD_TIME_FLASH_ONLY and transformers_loads:
        where = "generic path" if path.generic else "non-flash path"
        warnings.append(
            f"TGI's {where} loads the model through transformers and quantizes only with 8-bit bitsandbytes: "
            + (  # a checkpoint quantized ahead of time cannot be asked for bitsandbytes (refused above)
                f"this checkpoint's {req.quantize} weights are planned at 16 bits, the most they take there"
                if spec.checkpoint_quantize
                else f"--quantize {req.quantize} is ignored there and the weights load in fp16 (ask for bitsandbytes)"
            )
        )
    shard_options = [s for s in (1, 2, 4, 8) if s <= req.count and spec.kv_heads % s == 0 and spec.heads % s == 0]
    if not path.shards_heads:
        shard_options = [1]
    prefill_tokens = max(max_input, min(4096, max_input * req.concurrent_requests))
    tried = []
    chosen = None
    for q in quant_options:  # least quantization first, then fewest shards: the best quality that fits
        if q in MARLIN_4BIT and not gpu.supports("marlin") and req.quantize == "auto":
            continue
        for shards in shard_options:
            fit = _fit(spec, gpu, req, shards, q, prefill_tokens, kv_dtype_bytes, path)
            tried.append(fit)
            if fit["fits"]:
                chosen = fit
                break
        if chosen:
            break
    best = chosen or max(tried, key=lambda f: f["kv_token_capacity"])
    if chosen is None:
        warnings.append(
            f"does not fit: at best {best['kv_token_capacity']:,} KV tokens per replica for "
            f"{best['kv_tokens_needed']:,} needed ({req.concurrent_requests} x {req.max_total_tokens}); "
            + _what_would_fit(req, spec, gpu, path, tried)
        )
    if chosen is None:  # the flags below are the closest tried, not a recommendation
        reasons.append(
            f"nothing tried fits: the launch line is the closest ({best['kv_token_capacity']:,} of "
            f"{best['kv_tokens_needed']:,} KV tokens), to change as the warning says before it will serve"
        )
    elif spec.checkpoint_quantize:
        reasons.append(f"--quantize {best['quantize']}: the checkpoint is quantized so ahead of time")
    elif best["quantize"] != "none":
        reasons.append(
            f"--quantize {best['quantize']}: fp16 weights ({llm_weight_bytes(spec) / 1e9:.1f} GB) leave too little "
            "room for the KV cache"
            if req.quantize == "auto"
            else f"--quantize {best['quantize']} as asked"
        )
    if chosen is not None and best["shards"] > 1:
        reasons.append(f"--num-shard {best['shards']}: one GPU cannot hold weights and KV cache")
    replicas = req.count // best["shards"] if chosen is not None else 0
    if replicas > 1:  # the other cards were idle: TGI shards one model over --num-shard GPUs, never serves copies
        shards = best["shards"]
        groups = " | ".join(",".join(map(str, range(r * shards, (r + 1) * shards))) for r in range(replicas))
        reasons.append(
            f"{req.count} GPUs: {replicas} replicas of this launch line, one per CUDA_VISIBLE_DEVICES group ({groups}) "
            f"each with its own --port, behind a load balancer: {replicas}x the concurrent requests; "
            + (
                "sharding one replica over more GPUs would add KV room it does not need and traffic between the cards"
                if any(s > shards for s in shard_options)
                else "TGI cannot shard it further: "
                + (
                    "its generic path (transformers' class) is planned on one GPU"
                    if path.generic
                    else f"its heads do not split over more GPUs ({spec.heads} query, {spec.kv_heads} KV)"
                    if path.shards_heads
                    else f"its class for model type {spec.model_type!r} runs on one GPU"
                    if path.causal_lm
                    else "it refuses a Falcon with ALiBi sharded"
                    if path.alibi_fallback
                    else "its non-flash path runs on one GPU"
                )
            )
        )
    dtype = "bfloat16" if gpu.supports("bf16") else "float16"
    flags = {
        "--num-shard": best["shards"],
        "--cuda-memory-fraction": req.memory_fraction,
        "--max-input-tokens": max_input,
        "--max-total-tokens": req.max_total_tokens,
        "--max-batch-prefill-tokens": prefill_tokens,
        # the flash path sizes the batch's KV tokens from free memory itself; the non-flash path takes
        # max(16000, ...) whatever the memory, so the plan states what fits (TGI refuses 0: nothing fits then)
        "--max-batch-total-tokens": None if path.flash_path else best["kv_token_capacity"] or None,
        # past the launcher's 128, more requests at once are refused whatever the memory holds
        "--max-concurrent-requests": (
            req.concurrent_requests if req.concurrent_requests > TGI_DEFAULT_CONCURRENT_REQUESTS else None
        ),
        "--dtype": dtype if best["quantize"] == "none" else None,
        "--quantize": None if best["quantize"] == "none" else best["quantize"],
        "--kv-cache-dtype": req.kv_cache_dtype if kv_dtype_bytes == 1 else None,
    }
    if path.flash_path and best["fits"]:
        reasons.append(
            f"the KV cache holds about {best['kv_token_capacity']:,} tokens per replica: "
            f"{best['kv_token_capacity'] // req.max_total_tokens} concurrent requests at --max-total-tokens "
            "(TGI sizes --max-batch-total-tokens from the free memory itself)"
        )
    if dtype == "float16" and best["quantize"] == "none":
        reasons.append("--dtype float16: this card has no bf16")
    if best["quantize"] == "bitsandbytes" and not gpu.supports("int8-matmul"):
        warnings.append(
            f"bitsandbytes' 8-bit matmul kernels need compute capability 7.5+: on {gpu.name} it runs a slow 8-bit "
            "matmul, far slower than fp16 weights"
        )
    model_id = spec.name or MODEL_ID_PLACEHOLDER
    if not spec.name:
        warnings.append(
            f"{spec.key} does not say which model it describes (no _name_or_path): put the model's Hub id, or its "
            f"folder, in --model-id (the launch line holds the placeholder {MODEL_ID_PLACEHOLDER})"
        )
    if best["quantize"] in MARLIN_4BIT and not spec.checkpoint_quantize:  # TGI makes the others at load
        kind = best["quantize"].upper()
        model_id = f"{kind}-CHECKPOINT-OF-{model_id.split('/')[-1]}"
        warnings.append(
            f"--quantize {best['quantize']}: TGI loads {kind} weights quantized ahead of time and does not make them "
            f"from {title}: put a checkpoint of it quantized with {kind} in --model-id (the launch line holds a "
            "placeholder); EETQ, FP8 and bitsandbytes quantize at load, --quantize bitsandbytes-nf4 to 4 bits "
            "(slower than AWQ's kernels)"
        )
    launch = " ".join(f"{k} {v}" for k, v in flags.items() if v is not None)
    return {
        "gpu": gpu.to_dict(),
        "model": asdict(spec),
        "fits": best["fits"],
        "replicas": replicas,  # launch lines to run on req.count GPUs (0: none fits)
        "memory": best,
        "weights_bytes_by_quantization": {q: llm_weight_bytes(spec, q) for q in QUANT_BYTES_PER_PARAM},
        "flags": {k: v for k, v in flags.items() if v is not None},
        "launch": f"text-generation-launcher --model-id {model_id} {launch}",
        "reasons": reasons,
        "warnings": warnings,
        "considered": tried,
    }


__all__ = [
    "CPU_ROW",
    "KV_CACHE_DTYPES",
    "QUANT_BYTES_PER_PARAM",
    "LlmRequest",
    "MemoryFit",
    "PlanError",
    "calibrate_activations",
    "calibration_from_report",
    "cost_table",
    "llm_weight_bytes",
    "plan_llm",
    "plan_model_memory",
    "scaled_throughput",
    "tgi_budget_bytes",
    "tgi_runtime_bytes",
    "unpriced_cards",
]
