"""engine.bench.catalog and engine.bench.planner against figures computed by hand."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from engine.bench.catalog import CATALOG, DRIVER_RESERVE_MIB, MEMORY_TOTALS, PriceBook, detected_gpu, find_gpu
from engine.bench.config import CostConfig, LlmRequest
from engine.bench.llms import LLMS, LlmConfigError, spec_from_config
from engine.bench.planner import (
    CUDA_CONTEXT_BYTES,
    TGI_FLASH_MODEL_TYPES,
    TGI_NCCL_BYTES,
    TGI_RUNTIME_BYTES,
    PlanError,
    TgiPath,
    calibrate_activations,
    cost_for,
    cost_table,
    llm_weight_bytes,
    plan_llm,
    plan_model_memory,
    tgi_budget_bytes,
    tgi_generic_path,
)

GIB = 2**30


def test_every_cards_peak_rates_say_where_they_come_from() -> None:
    """A share of peak is compared with other tools': each card's rates name their datasheet or whitepaper (eight
    cards, the GeForce ones among them, named none, so a dense or sparse, fp16- or fp32-accumulate figure could not
    be told)."""
    unsourced = [key for key, gpu in CATALOG.items() if not gpu.spec_source]
    assert unsourced == []
    assert "FP32 accumulate" in CATALOG["RTX-4090"].spec_source and "sparsity" in CATALOG["L4"].spec_source


def test_catalog_lookup_and_features() -> None:
    assert find_gpu("NVIDIA A100-SXM4-80GB").key == "A100-80GB"
    assert find_gpu("NVIDIA L40S").key == "L40S" and find_gpu("NVIDIA L4").key == "L4"
    assert find_gpu("NVIDIA RTX A4000") is None  # "A40" is not a whole token of it
    assert find_gpu("v100-16gb").key == "V100-16GB"
    t4, h100 = CATALOG["T4"], CATALOG["H100"]
    assert not t4.supports("bf16") and not t4.supports("flash-attention") and t4.supports("fp16-tensor-cores")
    assert h100.supports("flash-attention") and not h100.nvenc and t4.nvenc
    assert t4.peak("bf16") == t4.peak("fp32") == 8.1  # no bf16 units: it runs at the fp32 rate
    assert h100.peak("fp16") == 989.5
    mine = detected_gpu("NVIDIA H100 80GB HBM3", 85_520_809_984, (9, 0))
    assert mine.key == "H100" and mine.detected and mine.memory_gb == pytest.approx(85.52, abs=0.01)
    assert mine.memory_bytes == 85_520_809_984  # its own total, not the catalog's
    unknown = detected_gpu("NVIDIA Quadro RTX 8000", 48 * 10**9, (7, 5))
    assert unknown.key == "detected" and unknown.peak_tflops["fp16"] is None


@pytest.mark.parametrize(
    ("nvml_name", "key"),
    [
        ("NVIDIA H100 80GB HBM3", "H100"),  # the SXM module
        ("NVIDIA H100 PCIe", "H100-PCIe"),
        ("NVIDIA H100 NVL", "H100-NVL"),
        ("NVIDIA H200", "H200"),  # the SXM module
        ("NVIDIA H200 NVL", "H200-NVL"),
        ("nvidia  h100 pcie", "H100-PCIe"),  # case and spacing do not matter
        ("H100 NVL", "H100-NVL"),  # nor the vendor's prefix
        ("h100-pcie", "H100-PCIe"),  # a catalog key
        ("H100 80GB HBM3", "H100"),  # a whole NVML name without the vendor's prefix (no alias names the SXM module)
    ],
)
def test_each_hopper_board_is_found_by_its_nvml_name(nvml_name: str, key: str) -> None:
    assert find_gpu(nvml_name).key == key


def test_hopper_boards_keep_their_own_datasheet_figures() -> None:
    """Dense rates (the datasheets' sparse figures halved): a PCIe or NVL card never gets the SXM module's."""
    sxm, pcie, nvl = CATALOG["H100"], CATALOG["H100-PCIe"], CATALOG["H100-NVL"]
    h200, h200_nvl = CATALOG["H200"], CATALOG["H200-NVL"]
    assert (sxm.peak("fp16"), pcie.peak("fp16"), nvl.peak("fp16")) == (989.5, 756.5, 835.5)
    assert (sxm.peak("tf32"), pcie.peak("tf32"), nvl.peak("tf32")) == (494.5, 378, 417.5)
    assert (sxm.peak("fp32"), pcie.peak("fp32"), nvl.peak("fp32")) == (67, 51, 60)
    assert (sxm.peak("int8"), pcie.peak("int8"), nvl.peak("int8")) == (1979, 1513, 1670.5)
    assert (sxm.memory_gb, pcie.memory_gb, nvl.memory_gb) == (80, 80, 94)
    assert (sxm.bandwidth_gbs, pcie.bandwidth_gbs, nvl.bandwidth_gbs) == (3350, 2000, 3900)
    assert h200.peak_tflops == sxm.peak_tflops and h200_nvl.peak_tflops == nvl.peak_tflops  # the same GH100 chip
    assert h200.memory_gb == h200_nvl.memory_gb == 141 and h200.bandwidth_gbs == h200_nvl.bandwidth_gbs == 4800
    for gpu in (sxm, pcie, nvl, h200, h200_nvl):
        assert "datasheet" in gpu.spec_source and gpu.compute_capability == (9, 0) and not gpu.nvenc
    pcie_card = detected_gpu("NVIDIA H100 PCIe", 85_520_809_984, (9, 0))
    assert pcie_card.key == "H100-PCIe" and pcie_card.peak("fp16") == 756.5 and pcie_card.name == "NVIDIA H100 PCIe"


def test_pcie_boards_and_variants_keep_their_own_figures() -> None:
    """A V100 or A100 PCIe card is not the SXM module, and a Ti, a laptop GPU or a MIG slice is not the card it
    names."""
    assert find_gpu("Tesla V100-PCIE-16GB").peak("fp16") == 112 and find_gpu("Tesla V100-SXM2-16GB").peak("fp16") == 125
    assert find_gpu("Tesla V100-PCIE-32GB").key == "V100-PCIe-32GB"
    assert find_gpu("Tesla V100S-PCIE-32GB").bandwidth_gbs == 1134
    assert (
        find_gpu("NVIDIA A100 80GB PCIe").bandwidth_gbs == 1935
        and find_gpu("NVIDIA A100-SXM4-80GB").bandwidth_gbs == 2039
    )
    for variant in (
        "NVIDIA GeForce RTX 3090 Ti",
        "NVIDIA GeForce RTX 4090 Laptop GPU",
        "NVIDIA A100-SXM4-40GB MIG 1g.5gb",
    ):
        assert find_gpu(variant) is None, variant
    assert find_gpu("NVIDIA GeForce RTX 3090").key == "RTX-3090"


def test_an_unknown_board_of_a_known_family_borrows_no_rates() -> None:
    """Only whole NVML names or distinctive tokens match: another H100 or H200 board stays unmatched."""
    assert find_gpu("NVIDIA H100 SXM5 64GB") is None
    assert find_gpu("NVIDIA H200 141GB HBM3e") is None
    assert find_gpu("NVIDIA GH200 480GB") is None  # the Grace Hopper superchip is not an H200
    other = detected_gpu("NVIDIA H100 SXM5 64GB", 64 * 10**9, (9, 0))
    assert other.key == "detected" and other.peak_tflops["fp16"] is None


def test_llm_weights_and_kv_cache_by_hand() -> None:
    mistral, llama = LLMS["mistral-7b"], LLMS["llama-2-7b"]
    assert mistral.kv_bytes_per_token() == 2 * 32 * 8 * 128 * 2 == 131_072  # 128 KiB per token
    assert llama.kv_bytes_per_token() == 524_288  # no grouped-query attention: 4x Mistral's
    assert llm_weight_bytes(mistral) == 14_480_000_000  # 7.24e9 parameters x 2 bytes
    embed = 2 * 32000 * 4096  # input embedding + output head stay fp16
    assert llm_weight_bytes(mistral, "awq") == int((7.24e9 - embed) * 66.5 / 128 + embed * 2)
    assert llm_weight_bytes(mistral, "awq") / 1e9 == pytest.approx(4.15, abs=0.01)
    assert llm_weight_bytes(LLMS["gemma-2b"]) == int(2.51e9 * 2)  # tied embeddings count once, still fp16
    with pytest.raises(PlanError, match="quantize"):
        llm_weight_bytes(mistral, "nf4")


def test_what_a_16_gb_card_holds_at_fp16_and_at_4_bits() -> None:
    fp16 = plan_llm(LlmRequest("V100-16GB", "llama-2-7b", max_total_tokens=4096, quantize="none"))
    # no flash attention: torch's allocator stops at 0.9 of the card's 16,160 MiB, the runtime outside it; 13.5 GB of
    # weights leave room for 2,546 KV tokens, not the 4,096 one request needs
    assert fp16["memory"]["kv_token_capacity"] == 2546
    m = fp16["memory"]["per_gpu"]
    assert m["card_total_bytes"] == 16160 * 2**20 and m["budget_bytes"] == int(16160 * 2**20 * 0.9 + TGI_RUNTIME_BYTES)
    kv = m["budget_bytes"] - llm_weight_bytes(LLMS["llama-2-7b"]) - TGI_RUNTIME_BYTES - m["prefill_activation_bytes"]
    assert fp16["memory"]["kv_token_capacity"] == kv // 524_288 == 2546
    assert not fp16["fits"]
    # the advice names only what could help: a V100 cannot shard (no flash attention) nor run 4-bit Marlin kernels
    assert fp16["warnings"][-1].endswith("(1 x 4096); try a larger GPU or shorter sequences")
    crowd = plan_llm(LlmRequest("A100-40GB", "llama-2-13b", concurrent_requests=1000))  # auto tried AWQ already
    advice = (
        "try a larger GPU, more GPUs (--count 2 shards it further), an 8-bit KV cache (--kv-cache-dtype fp8_e4m3fn),"
    )
    assert advice + " fewer concurrent requests or" in str(crowd)
    # its launch line (AWQ, the most room) is the closest, not advice: it read "--quantize awq: fp16 weights leave
    # too little room", as for a plan that fits
    assert crowd["flags"]["--quantize"] == "awq" and crowd["reasons"][0].startswith("nothing tried fits: the launch ")
    assert not any(r.startswith("--quantize") for r in crowd["reasons"])
    wide = plan_llm(LlmRequest("A100-40GB", "llama-2-13b", count=8, concurrent_requests=1000, quantize="none"))
    advice = (
        "try a larger GPU, 4-bit weights (--quantize awq, or bitsandbytes-nf4 to quantize this checkpoint at load), "
        "an 8-bit KV cache (--kv-cache-dtype fp8_e4m3fn), fewer"
    )
    assert advice in str(wide["warnings"])
    awq = plan_llm(LlmRequest("L4", "llama-2-7b", max_total_tokens=4096, quantize="awq", concurrent_requests=4))
    m = awq["memory"]["per_gpu"]
    # TGI's flash path keeps 1 - 0.9 x 0.9 of the card's total back: the L4's 23,570,219,008 bytes as CUDA reports them,
    # not the 24 GB it is sold as
    budget = int(23_570_219_008 * 0.9 * 0.9)
    assert m["budget_bytes"] == budget and m["runtime_bytes"] == TGI_RUNTIME_BYTES
    kv = budget - llm_weight_bytes(LLMS["llama-2-7b"], "awq") - TGI_RUNTIME_BYTES - m["prefill_activation_bytes"]
    assert awq["memory"]["kv_token_capacity"] == kv // 524_288
    assert awq["fits"] and awq["flags"]["--quantize"] == "awq" and "--dtype" not in awq["flags"]
    assert "--quantize awq" in awq["launch"] and "--max-total-tokens 4096" in awq["launch"]
    # TGI cannot quantize to AWQ at load: not the base model's id, and the warning says what to put there
    assert awq["launch"].startswith("text-generation-launcher --model-id AWQ-CHECKPOINT-OF-Llama-2-7b-hf ")
    assert any("loads AWQ weights quantized ahead of time" in w for w in awq["warnings"])


def test_token_limits_default_to_the_models_context_at_most_4096_as_tgi() -> None:
    short = plan_llm(LlmRequest("T4", "phi-2"))  # a 2048-token context
    assert plan_llm(LlmRequest("t4", "phi-2")) == short  # a card's key in any letter case, as find_gpu takes it
    assert short["flags"]["--max-total-tokens"] == 2048 and short["flags"]["--max-input-tokens"] == 2047
    assert not any("exceeds" in w for w in short["warnings"])
    long = plan_llm(LlmRequest("H100", "mistral-7b"))  # a 32k context: TGI's cap of 4096
    assert long["flags"]["--max-total-tokens"] == 4096 and long["flags"]["--max-input-tokens"] == 4095
    asked = plan_llm(LlmRequest("T4", "phi-2", max_total_tokens=4096))  # asked for: kept, with a warning
    assert asked["flags"]["--max-total-tokens"] == 4096 and any("exceeds" in w for w in asked["warnings"])
    with pytest.raises(PlanError, match=r"max total tokens 1048577 is outside 2\.\.1048576$"):  # not 1.04858e+06
        LlmRequest.build({"gpu": "T4", "llm": "phi-2", "max_total_tokens": 1048577})
    # the flags as typed, and why (it said "max_input_tokens (100) must be below max_total_tokens (100)")
    with pytest.raises(PlanError, match=r"^--max-input-tokens 100 must be below --max-total-tokens 100: a request "
                       "generates at least one token after its prompt$"):  # fmt: skip
        plan_llm(LlmRequest("T4", "phi-2", max_input_tokens=100, max_total_tokens=100))
    assert "--max-total-tokens 4096 exceeds microsoft/phi-2's context of 2048 tokens" in asked["warnings"]


def test_phi_without_flash_attention_is_warned_of_tgis_name_error_there() -> None:
    """get_model's phi branch without flash attention calls TransformersFlashCausalLM.fallback, a name whose import
    fails with flash attention's: a NameError at load on the cards the planner takes to lack flash attention."""
    on_t4 = plan_llm(LlmRequest("T4", "phi-2"))["warnings"]
    assert any(w.startswith("TGI's 'phi' branch without flash attention calls TransformersFlashCausalLM.fallback")
               and "NameError on NVIDIA T4" in w for w in on_t4)  # fmt: skip
    assert not any("NameError" in w for w in plan_llm(LlmRequest("A100-80GB", "phi-2"))["warnings"])
    assert not any("NameError" in w for w in plan_llm(LlmRequest("T4", "tinyllama-1.1b"))["warnings"])


def test_auto_quantization_sharding_and_old_card_warnings() -> None:
    small = plan_llm(LlmRequest("A100-80GB", "mistral-7b", max_total_tokens=8192))
    assert small["fits"] and small["flags"]["--num-shard"] == 1 and "--quantize" not in small["flags"]
    assert small["flags"]["--dtype"] == "bfloat16" and small["flags"]["--max-input-tokens"] == 8191
    assert "--max-batch-total-tokens" not in small["flags"]  # the flash path sizes it from free memory
    two = plan_llm(LlmRequest("L4", "llama-2-13b", count=2, max_total_tokens=4096, quantize="none"))
    assert two["fits"] and two["flags"]["--num-shard"] == 2  # 26 GB of weights need both cards
    assert two["replicas"] == 1 and not any("replicas" in r for r in two["reasons"])
    five = plan_llm(LlmRequest("L4", "llama-2-13b", count=5, max_total_tokens=4096, quantize="none"))
    assert five["flags"]["--num-shard"] == 2 and five["replicas"] == 2  # the fifth card cannot hold a replica
    assert any("2 replicas" in r and "(0,1 | 2,3)" in r and "add KV room" in r for r in five["reasons"])
    mqa = plan_llm(LlmRequest("A100-80GB", "gemma-2b", count=4))  # its other three cards sat idle
    assert mqa["replicas"] == 4 and any("(0 | 1 | 2 | 3)" in r and "(8 query, 1 KV)" in r for r in mqa["reasons"])
    old = plan_llm(LlmRequest("V100-16GB", "mistral-7b", count=2, max_total_tokens=4096))
    assert old["flags"]["--num-shard"] == 1  # no flash attention: TGI cannot shard
    assert old["replicas"] == 2 and any("non-flash path runs on one GPU" in r for r in old["reasons"])
    # auto skips 4-bit (Marlin needs 8.0+), and TGI's non-flash path ignores eetq: bitsandbytes is its int8
    assert old["flags"]["--quantize"] == "bitsandbytes"
    # a V100 (7.0) runs bitsandbytes' slow 8-bit matmul: said, as a T4 (7.5, its int8 kernels) is not
    assert any("8-bit matmul kernels need compute capability 7.5+: on NVIDIA V100" in w for w in old["warnings"])
    t4 = plan_llm(LlmRequest("T4", "mistral-7b", max_total_tokens=4096, quantize="bitsandbytes"))
    assert t4["flags"]["--quantize"] == "bitsandbytes" and not any("8-bit matmul" in w for w in t4["warnings"])
    # that path admits max(16000, ...) tokens whatever the memory: the plan states what fits
    assert old["flags"]["--max-batch-total-tokens"] == old["memory"]["kv_token_capacity"] >= 4096
    assert "--dtype" not in old["flags"]
    asked = plan_llm(LlmRequest("V100-16GB", "mistral-7b", max_total_tokens=4096, quantize="eetq"))
    assert any("--quantize eetq is ignored there" in w for w in asked["warnings"])
    # and sized as the fp16 weights that load: 14.5 GB do not fit 16 GB at 0.9 (it planned int8 and said "fits")
    assert not asked["fits"] and "--quantize" not in asked["flags"]
    assert any("flash attention" in w for w in old["warnings"])
    hopper = plan_llm(LlmRequest("H100", "llama-2-13b", max_total_tokens=4096, concurrent_requests=80))
    assert hopper["flags"].get("--quantize") in (None, "bitsandbytes", "awq")  # never EETQ above 8.9
    eetq = plan_llm(LlmRequest("H100", "mistral-7b", quantize="eetq"))
    assert any("EETQ" in w for w in eetq["warnings"])
    long = plan_llm(LlmRequest("H100", "llama-2-7b", max_total_tokens=8192))
    assert any("exceeds" in w for w in long["warnings"])
    for bad, message in (
        (LlmRequest("B200", "mistral-7b"), "unknown GPU"),
        (LlmRequest("H100", "gpt-5"), "llm 'gpt-5' is neither a preset"),
        (
            LlmRequest("H100", "mistral-7b", max_input_tokens=5000, max_total_tokens=4096),
            "below --max-total-tokens 4096",
        ),
    ):
        with pytest.raises(PlanError, match=message):
            plan_llm(bad)


def test_cost_arithmetic_and_scaling() -> None:
    book = PriceBook.defaults()
    rows = {r["gpu"]: r for r in cost_table(100.0, "fp16", CATALOG["H100"], book)}
    h100 = rows["H100"]
    price = book.prices["H100"]
    assert h100["basis"] == "measured" and h100["samples_per_s"] == 100.0
    assert h100["cost_per_1000_requests"] == pytest.approx(price / (100 * 3600) * 1000)
    assert h100["requests_per_10_usd"] == pytest.approx(10 / price * 100 * 3600)
    a100 = rows["A100-80GB"]
    assert a100["basis"] == "estimate" and a100["samples_per_s"] == pytest.approx(100 * 312 / 989.5)
    per_video = {r["gpu"]: r for r in cost_table(100.0, "fp16", CATALOG["H100"], book, samples_per_request=250)}
    assert per_video["H100"]["requests_per_s"] == pytest.approx(0.4)
    on_cpu = cost_table(5.0, "fp32", None, book)
    assert all(r["samples_per_s"] is None and "CPU" in r["basis"] for r in on_cpu)
    # the CPU machine itself, at its given price, beside the cards (every row was a dash)
    machine, *cards = cost_table(5.0, "fp32", None, book, samples_per_request=250, cpu_price_per_hour=0.5)
    assert machine["gpu"] == "CPU (measured)" and machine["basis"] == "measured" and cards == on_cpu
    assert machine["requests_per_s"] == pytest.approx(0.02)
    assert machine["cost_per_1000_requests"] == pytest.approx(0.5 / (0.02 * 3600) * 1000)
    with pytest.raises(PlanError, match=r"a card's price goes in prices\.json"):
        cost_table(5.0, "fp16", CATALOG["H100"], book, cpu_price_per_hour=0.5)
    with pytest.raises(PlanError, match=r"cpu price per hour prices a throughput measured on the CPU"):
        cost_for(CostConfig(throughput=5.0, measured_on="H100", cpu_price_per_hour=0.5), book)
    with pytest.raises(PlanError):
        cost_table(0.0, "fp16", None, book)
    unpriced = next(key for key, gpu in CATALOG.items() if key not in book.prices and gpu.key != "detected")
    mine = {r["gpu"]: r for r in cost_table(10.0, "fp16", CATALOG[unpriced], book)}[unpriced]  # it was left out
    assert mine["samples_per_s"] == 10.0 and mine["price_per_hour"] is None and "no price" in mine["basis"]
    assert mine["cost_per_1000_requests"] is None
    # a card the catalog does not know: its measured throughput shown, no other card estimated from it
    from engine.bench.catalog import report_gpu

    report = {"machine": {"gpu": {"name": "NVIDIA GeForce RTX 3080", "memory_bytes": 10 * 2**30,
                                  "compute_capability": "8.6"}}}  # fmt: skip
    uncatalogued = cost_table(500.0, "fp16", report_gpu(report), book)
    assert uncatalogued[0]["gpu"] == "NVIDIA GeForce RTX 3080" and uncatalogued[0]["samples_per_s"] == 500.0
    assert all(r["samples_per_s"] is None and "no catalog rates" in r["basis"] for r in uncatalogued[1:])
    assert report_gpu({"machine": {"gpu": {"name": "NVIDIA A100-SXM4-80GB"}}}).key == "A100-80GB"
    assert report_gpu({"machine": {"gpu": None}}) is None


def test_price_book_edits_round_trip(tmp_path) -> None:
    path = tmp_path / "prices.json"
    book = PriceBook.load(path)  # missing file: the defaults
    assert book.prices["T4"] == CATALOG["T4"].price_per_hour
    book.update({"T4": 0.5}, {"T4": "my provider, 2026-11-22"})
    book.save(path)
    again = PriceBook.load(path)
    assert again.prices["T4"] == 0.5 and again.sources["T4"] == "my provider, 2026-11-22"
    # saved over a base (a visitor's file over the operator's): only the changes, a price removed stays removed
    base = PriceBook.load(path)
    again.update({"L4": 0.6, "A10G": None}, {"L4": "mine"})
    own = tmp_path / "own.json"
    again.save(own, base)
    assert json.loads(own.read_text())["prices"] == {"A10G": None, "L4": 0.6}
    mine = PriceBook.load(path, own)
    assert mine.prices["L4"] == 0.6 and "A10G" not in mine.prices and mine.prices["T4"] == 0.5
    with pytest.raises(ValueError, match="no GPU"):
        again.update({"TPUv5": 1.0})
    for absurd in (-1, 1e-300, 1e6, "0.5", True):
        with pytest.raises(ValueError, match=r"dollars per hour in \[0.001, 1000\)"):
            again.update({"T4": absurd})
    with pytest.raises(ValueError, match="the source of T4's price must be text"):
        again.update({"T4": 0.5}, {"T4": ["a", "list"]})
    path.write_text("{broken")
    with pytest.raises(ValueError, match=r"prices\.json: not valid JSON"):
        PriceBook.load(path)
    for text in ("[]", '"x"', '{"prices": []}', '{"prices": {}, "sources": 5}'):  # AttributeErrors once
        path.write_text(text)
        with pytest.raises(ValueError, match="must be a JSON object"):
            PriceBook.load(path)
    path.write_text('{"prices": {"T4": 0.5}, "currency": "EUR"}')  # euros read as dollars, silently, once
    with pytest.raises(ValueError, match=r"has 'currency': it holds only \"prices\" \(US dollars per hour"):
        PriceBook.load(path)


def test_model_memory_plan_by_hand() -> None:
    per_sample, fixed = calibrate_activations([(1, 1050), (4, 1200), (8, 1400)])
    assert (per_sample, fixed) == (50, 1000)
    with pytest.raises(PlanError):
        calibrate_activations([(4, 1), (4, 2)])
    t4 = CATALOG["T4"]
    weights, act = 72_600_000, 2_000_000
    fit = plan_model_memory(t4, weights, act, "fp16", 0.9, target_samples_per_s=5000, samples_per_s_per_gpu=1800)
    t4_total = 15095 * 2**20  # what CUDA reports on a T4 (its "16 GB" is 15,360 MiB in nvidia-smi)
    assert (int(t4_total * 0.9) - weights - CUDA_CONTEXT_BYTES) // act == 6666  # capped at the 4096 asked for
    assert fit.budget_bytes == int(t4_total * 0.9)
    assert fit.max_batch == 4096 and fit.recommended_batch == 4096
    assert fit.capped and fit.max_batch_text == "4096 (the most planned; more would fit)"  # it read as the limit
    small = plan_model_memory(t4, weights, act, max_batch=3000)
    assert small.max_batch == 3000 and small.recommended_batch == 2048  # a power of two
    assert fit.gpus_for_target == 3 and fit.recommended_precision == "fp16"
    # 99.9 / 33.3 is 3.0000000000000004 in floating point: three cards, not four
    assert (
        plan_model_memory(t4, weights, act, target_samples_per_s=99.9, samples_per_s_per_gpu=33.3).gpus_for_target == 3
    )
    assert fit.predicted_bytes == weights + CUDA_CONTEXT_BYTES + fit.recommended_batch * act
    bf = plan_model_memory(t4, weights, act, "bf16")
    assert "NVIDIA T4 (compute capability 7.5) has no bf16: use fp16" in bf.warnings  # not "(7, 5)"
    tf = plan_model_memory(t4, weights, act, "tf32")  # it planned "at tf32" unsaid
    assert "NVIDIA T4 (compute capability 7.5) has no tf32: tf32 runs as plain fp32 there" in tf.warnings
    huge = plan_model_memory(t4, 20 * 10**9, act)
    assert huge.max_batch == 0 and huge.recommended_batch == 0 and huge.warnings and not huge.capped
    assert (
        plan_model_memory(t4, 20 * 10**9, act, target_samples_per_s=100, samples_per_s_per_gpu=10).gpus_for_target
        is None
    )
    exact = plan_model_memory(t4, weights, act, max_batch=6666)
    assert exact.max_batch == 6666 and not exact.capped and exact.max_batch_text == "6666"
    assert plan_model_memory(t4, weights, 0).capped  # no activations: any batch fits


def test_calibration_from_a_sweep_report() -> None:
    from engine.bench.planner import calibration_from_report

    def row(batch: int, peak: int, **extra) -> dict:
        base = {"status": "ok", "device": "cuda", "runtime": "eager", "precision": "fp16", "batch": batch}
        return {**base, "peak_allocated_bytes": peak, **extra}

    report = {
        "results": [
            row(128, 100 * 2**20 + 128 * 3 * 2**20),
            row(512, 100 * 2**20 + 512 * 3 * 2**20),
            row(512, 1, precision="fp32"),  # other precision: ignored
            row(1024, 1, status="oom"),  # failed: ignored
            row(256, 1, device="cpu"),  # CPU: no allocator peak to learn from
        ]
    }
    assert calibration_from_report(report, "fp16") == (3 * 2**20, 100 * 2**20)
    assert calibration_from_report(report, "bf16") is None
    odd = [row("32", 5), row(64, float("nan")), row(True, 5), row(96, "big")]  # skipped, not a TypeError
    assert calibration_from_report({"results": report["results"] + odd}, "fp16") == (3 * 2**20, 100 * 2**20)
    for broken in ({"results": "x"}, {"results": [1, 2]}):
        with pytest.raises(PlanError, match="results must be a list of rows"):
            calibration_from_report(broken, "fp16")
    # rows of one batch in two layouts (a sweep with channels_last "both"): the hungrier one sizes the plan
    layouts = [row(b, 100 * 2**20 + b * per * 2**20, channels_last=cl) for b in (32, 128) for per, cl in
               ((1, False), (2, True))]  # fmt: skip
    assert calibration_from_report({"results": layouts}, "fp16") == (2 * 2**20, 100 * 2**20)


def test_a_calibration_that_cannot_size_a_batch_is_refused(tmp_path) -> None:
    """Flat or falling peaks, another model's report, weights over the card: refused or 0, never 4096 on a T4."""
    import json

    from engine.bench.config import NetworkPlanConfig
    from engine.bench.planner import plan_network

    def report(peaks: dict[int, int], model: str = "wav2lip") -> dict:
        rows = [{"status": "ok", "device": "cuda", "runtime": "eager", "precision": "fp16", "batch": b,
                 "peak_allocated_bytes": p} for b, p in peaks.items()]  # fmt: skip
        return {"model": {"name": model}, "results": rows}

    config = NetworkPlanConfig(gpu="T4")
    with pytest.raises(PlanError, match="do not grow with the batch"):
        plan_network(config, tmp_path, report({32: 10**12, 128: 10**12}))
    with pytest.raises(PlanError, match="do not grow with the batch"):
        plan_network(config, tmp_path, report({32: 10**9, 128: 10**8}))
    with pytest.raises(PlanError, match="measured 's3fd', not 'wav2lip'"):
        plan_network(config, tmp_path, report({32: 10**8, 128: 2 * 10**8}, model="s3fd"))
    nameless = report({32: 10**8, 128: 2 * 10**8})
    del nameless["model"]  # its peaks may be any network's
    with pytest.raises(PlanError, match=r"does not say which network it measured \(no model\.name\)"):
        plan_network(config, tmp_path, nameless)
    _, fit = plan_network(config, tmp_path, report({32: 10**12, 128: 10**12 + 96 * 2**20}))
    assert fit.max_batch == 0 and fit.recommended_batch == 0  # 1 TB of weights: nothing fits
    with pytest.raises(PlanError, match="go together"):
        NetworkPlanConfig.build({"gpu": "T4", "target_throughput": 5000})
    with pytest.raises(PlanError, match=r"1e\+12 samples/s at 0.001 per GPU needs 1,000,000,000,000,000 GPUs, more"):
        NetworkPlanConfig.build({"gpu": "T4", "target_throughput": 1e12, "throughput_per_gpu": 0.001})
    assert NetworkPlanConfig.build({"gpu": "T4", "target_throughput": 1e6, "throughput_per_gpu": 10}).gpu == "T4"
    (tmp_path / "r.json").write_text(json.dumps([1, 2]))
    with pytest.raises(PlanError, match="must be a JSON object"):
        plan_network(NetworkPlanConfig(gpu="T4", calibrate=tmp_path / "r.json"), tmp_path)
    # a photo given by mistake: "'utf-8' codec can't decode byte 0xff", never saying what calibrate takes
    (tmp_path / "face.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")
    with pytest.raises(PlanError, match=r"^calibrate: face\.jpg is not text, so not a sweep's report: give a GPU "
                       r"sweep's JSON report \(`avatarbench bench --json`"):  # fmt: skip
        plan_network(NetworkPlanConfig(gpu="T4", calibrate=tmp_path / "face.jpg"), tmp_path)
    (tmp_path / "notes.txt").write_text("peaks: 1, 2")
    with pytest.raises(PlanError, match=r"calibrate: notes\.txt: not valid JSON.*; calibrate takes a GPU sweep's JSON"):
        plan_network(NetworkPlanConfig(gpu="T4", calibrate=tmp_path / "notes.txt"), tmp_path)


def test_the_tab_names_the_replicas_the_plan_runs() -> None:
    pytest.importorskip("gradio")
    from ui.bench import _plan_markdown

    text = _plan_markdown(plan_llm(LlmRequest("A100-80GB", "gemma-2b", count=4)))
    assert text.startswith("**google/gemma-2b** on 1 × NVIDIA A100 80GB, 4 replicas: ✅ fits")
    assert ", 1 replicas" not in _plan_markdown(plan_llm(LlmRequest("A100-80GB", "gemma-2b")))


def test_the_tabs_plan_shows_the_planners_verdict_and_figures_in_their_units() -> None:
    """Mistral-7B unquantised does not fit on a T4: the tab must not say it fits, and its KV cache is 128 KiB per
    token (32 layers x 8 KV heads x 128 x 2 (K and V) x 2 bytes), weights 14.48 GB (decimal, as the line says)."""
    pytest.importorskip("gradio")
    from ui.bench import _plan_markdown

    text = _plan_markdown(plan_llm(LlmRequest("T4", "mistral-7b", quantize="none")))
    head, per_gpu, kv, *_ = text.splitlines()
    assert head == "**mistralai/Mistral-7B-v0.1** on 1 × NVIDIA T4: ❌ does not fit"
    assert "weights 14.48 GB" in per_gpu and "runtime 1.07 GB" in per_gpu
    assert kv == "- KV cache 128 KiB per token; room for 0 tokens (4,096 needed)"


def test_the_bench_tab_describes_only_a_gpu_of_its_own_process() -> None:
    """A Ray cluster's GPU on another node ("NODE/cuda:0") or one only declared to Ray crashed the app's start-up
    when the tab asked this process's PyTorch to describe it."""
    pytest.importorskip("gradio")
    from ui.bench import _this_card

    assert _this_card("5fb4a966/cuda:0") is None and _this_card("cpu") is None
    import torch

    if not torch.cuda.is_available():  # "Torch not compiled with CUDA enabled" before
        assert _this_card("cuda:0") is None


def test_hopper_quantizes_to_fp8_and_many_requests_are_let_in() -> None:
    """EETQ stops at 8.9: auto took the deprecated bitsandbytes on an H100 (and TGI turns CUDA graphs off for
    it); FP8 is TGI's 8-bit there. Past 128 requests at once TGI's launcher refuses the rest unless told."""
    hopper = plan_llm(LlmRequest("H100", "llama-2-13b", max_total_tokens=4096, concurrent_requests=16))
    assert hopper["fits"] and hopper["flags"]["--quantize"] == "fp8" and hopper["flags"]["--num-shard"] == 1
    assert hopper["memory"]["per_gpu"]["weights_bytes"] == pytest.approx(
        (13.0e9 - 2 * 32000 * 5120) * (1 + 4 / 4096) + 2 * (2 * 32000 * 5120), abs=1
    )
    ada = plan_llm(LlmRequest("L40S", "llama-2-13b", max_total_tokens=4096, concurrent_requests=6))
    assert ada["flags"]["--quantize"] == "eetq"  # EETQ covers 8.9
    assert any(
        "FP8 weights need" in w for w in plan_llm(LlmRequest("A100-80GB", "mistral-7b", quantize="fp8"))["warnings"]
    )
    old = plan_llm(LlmRequest("V100-32GB", "mistral-7b", max_total_tokens=2048, quantize="fp8"))
    assert "--quantize" not in old["flags"] and any("--quantize fp8 is ignored there" in w for w in old["warnings"])
    many = plan_llm(LlmRequest("H100", "tinyllama-1.1b", concurrent_requests=300))
    assert many["fits"] and many["flags"]["--max-concurrent-requests"] == 300
    assert "--max-concurrent-requests 300" in many["launch"]
    few = plan_llm(LlmRequest("H100", "tinyllama-1.1b", concurrent_requests=128))
    assert "--max-concurrent-requests" not in few["flags"]
    nothing = plan_llm(LlmRequest("T4", "llama-2-13b", quantize="none", max_total_tokens=4096))
    assert not nothing["fits"] and "--max-batch-total-tokens" not in nothing["flags"]  # TGI refuses 0


def test_each_card_is_planned_at_the_total_cuda_reports() -> None:
    """Not the size on the box: an "80GB" H100 has 81,106 MiB for CUDA, a "24GB" L4 22,478 MiB. Each board records
    nvidia-smi's total and CUDA's with their sources; one whose CUDA total was not found is given nvidia-smi's less the
    largest driver reserve seen (762 MiB, the A100 80GB SXM)."""
    assert set(MEMORY_TOTALS) == set(CATALOG)
    h100, l4, h200 = CATALOG["H100"], CATALOG["L4"], CATALOG["H200"]
    assert (h100.nvml_total_mib, h100.memory_bytes) == (81559, 85_045_477_376)
    assert (l4.nvml_total_mib, l4.memory_bytes) == (23034, 23_570_219_008)
    assert h200.memory_bytes == 150_109_880_320  # this repository's own H200 report
    by_rule = {key for key, gpu in CATALOG.items() if gpu.cuda_total_bytes is None}
    assert by_rule == {"V100S", "A100-80GB-PCIe", "RTX-4090D-48GB", "H100-PCIe", "H200-NVL"}
    assert CATALOG["H100-PCIe"].memory_bytes == (81559 - DRIVER_RESERVE_MIB) * 2**20
    gaps = {k: g.nvml_total_mib - g.cuda_total_bytes / 2**20 for k, g in CATALOG.items() if g.cuda_total_bytes}
    assert max(gaps.values()) <= DRIVER_RESERVE_MIB and min(gaps.values()) > 0  # no CUDA total above nvidia-smi's
    for key, gpu in CATALOG.items():
        assert 0.9 < gpu.memory_bytes / (gpu.memory_gb * 1e9) < 1.1, key  # the box's size, give or take the units
        assert gpu.memory_source and gpu.to_dict()["memory_bytes"] == gpu.memory_bytes
    other = detected_gpu("NVIDIA L4", 23_000_000_000, (8, 9))  # another driver's reserve: its own figure wins
    assert other.memory_bytes == 23_000_000_000 and other.memory_source == "this machine's CUDA total"
    assert detected_gpu("NVIDIA Quadro RTX 8000", 50_000_000_000, (7, 5)).memory_bytes == 50_000_000_000


def test_the_kv_cache_is_sized_as_tgi_sizes_it() -> None:
    """TGI's flash path keeps 1 - fraction x 0.9 of the CUDA total back and gives the cache what is left after weights,
    runtime and the warm-up prefill's activations. The old rule (0.9 of the box's 24 GB, less a 2 GiB reserve) said
    two 4096-token requests of Llama-2-7B fit an L4: TGI's leaves room for 7,825 tokens, not 8,192."""
    plan = plan_llm(LlmRequest("L4", "llama-2-7b", max_total_tokens=4096, quantize="none", concurrent_requests=2))
    assert not plan["fits"] and plan["memory"]["kv_tokens_needed"] == 8192
    m = plan["memory"]["per_gpu"]
    total = 23_570_219_008
    assert m["card_total_bytes"] == total and m["budget_bytes"] == int(total * 0.9 * 0.9)
    assert m["runtime_bytes"] == TGI_RUNTIME_BYTES  # CUDA graphs come out of what TGI keeps back, not out of this
    kv = m["budget_bytes"] - llm_weight_bytes(LLMS["llama-2-7b"]) - TGI_RUNTIME_BYTES - m["prefill_activation_bytes"]
    assert m["kv_cache_bytes"] == kv and plan["memory"]["kv_token_capacity"] == kv // 524_288 == 7825
    assert plan_llm(LlmRequest("L4", "llama-2-7b", max_total_tokens=4096, quantize="none"))["fits"]  # one does
    # the fraction asked for is the one TGI applies: at 1.0 it keeps back only its 10%
    whole = plan_llm(LlmRequest("L4", "llama-2-7b", max_total_tokens=4096, quantize="none", memory_fraction=1.0))
    assert whole["memory"]["per_gpu"]["budget_bytes"] == int(total * 0.9)
    assert whole["flags"]["--cuda-memory-fraction"] == 1.0
    # sharded, each shard also holds NCCL's buffers
    two = plan_llm(LlmRequest("L4", "llama-2-13b", count=2, max_total_tokens=4096, quantize="none"))
    assert two["memory"]["shards"] == 2
    assert two["memory"]["per_gpu"]["runtime_bytes"] == TGI_RUNTIME_BYTES + TGI_NCCL_BYTES


def test_a_detected_card_is_planned_at_its_own_total() -> None:
    """The card this machine has stands in for the catalog's entry with the total CUDA reports here."""
    own = detected_gpu("NVIDIA H100 80GB HBM3", 85_000_000_000, (9, 0))
    plan = plan_llm(LlmRequest("H100", "mistral-7b"), card=own)
    m = plan["memory"]["per_gpu"]
    assert m["budget_bytes"] == int(85e9 * 0.9 * 0.9) and m["card_total_bytes"] == 85_000_000_000
    assert plan["gpu"]["memory_bytes"] == 85_000_000_000
    fit = plan_model_memory(own, 10**9, 10**6, memory_fraction=0.5)
    assert fit.budget_bytes == int(85e9 * 0.5)


def test_a_cost_table_refuses_a_request_of_no_samples() -> None:
    """cost_table divides by the samples a request is: unchecked, 0 would raise ZeroDivisionError and a negative size
    give negative costs, wherever its callers' own checks do not run first."""
    for size in (0, -250):
        with pytest.raises(PlanError, match="samples per request must be positive"):
            cost_table(100.0, "fp16", CATALOG["H100"], PriceBook.defaults(), samples_per_request=size)


def test_the_model_memory_plan_counts_cards_up_predicts_at_its_batch_and_takes_a_share_of_the_card() -> None:
    """Cards for a target are rounded up (2.5 cards' work needs 3: rounding to the nearest planned 2, short of the
    target); the predicted memory is at the recommended batch (a power of two), not at the most that fits; a memory
    fraction outside (0, 1] is refused, not planned past the card."""
    t4, weights, act = CATALOG["T4"], 72_600_000, 2_000_000

    def cards(target: float, per_gpu: float) -> int | None:
        return plan_model_memory(
            t4, weights, act, target_samples_per_s=target, samples_per_s_per_gpu=per_gpu
        ).gpus_for_target

    assert cards(5000, 2000) == 3 and cards(2100, 1000) == 3
    small = plan_model_memory(t4, weights, act, max_batch=3000)
    assert (small.max_batch, small.recommended_batch) == (3000, 2048)
    assert small.predicted_bytes == weights + CUDA_CONTEXT_BYTES + 2048 * act
    for fraction in (0, -0.5, 1.5):
        with pytest.raises(PlanError, match=r"memory fraction must be in \(0, 1\]"):
            plan_model_memory(t4, weights, act, memory_fraction=fraction)


def test_calibration_takes_each_batchs_hungriest_row_whichever_comes_last() -> None:
    """Rows of one batch in two layouts: the hungrier one sizes the plan even when the leaner one comes after it
    (keeping the last row seen would undersize the activations whenever the report lists the hungry layout first)."""
    from engine.bench.planner import calibration_from_report

    def row(batch: int, per_sample: int) -> dict:
        return {"status": "ok", "device": "cuda", "runtime": "eager", "precision": "fp16", "batch": batch,
                "peak_allocated_bytes": 100 * 2**20 + batch * per_sample * 2**20}  # fmt: skip

    hungry_first = [row(b, per) for b in (32, 128) for per in (2, 1)]
    assert calibration_from_report({"results": hungry_first}, "fp16") == (2 * 2**20, 100 * 2**20)


def test_a_sharded_plan_splits_weights_kv_cache_and_prefill_over_its_shards_by_hand() -> None:
    """Llama-2-13B on two L4s: each shard holds half the weights, half of each token's KV cache and half the
    prefill's hidden-sized temporaries (the last 256 tokens' fp32 logits whole), beside its runtime and NCCL's
    buffers."""
    spec = LLMS["llama-2-13b"]
    plan = plan_llm(LlmRequest("L4", "llama-2-13b", count=2, max_total_tokens=4096, quantize="none"))
    m = plan["memory"]["per_gpu"]
    prefill = int(4095 * 5120 * 2 * 12 / 2 + 32000 * 4 * 256)  # 4095 prompt tokens, hidden 5120, vocab 32000
    assert plan["memory"]["shards"] == 2 and m["prefill_activation_bytes"] == prefill
    assert m["weights_bytes"] == int(llm_weight_bytes(spec) / 2)
    budget = int(23_570_219_008 * 0.9 * 0.9)
    kv = budget - llm_weight_bytes(spec) / 2 - (TGI_RUNTIME_BYTES + TGI_NCCL_BYTES) - prefill
    assert plan["memory"]["kv_token_capacity"] == int(kv // (spec.kv_bytes_per_token() / 2))


def test_the_non_flash_path_is_never_planned_past_the_card() -> None:
    """torch's allocator stops at fraction x total with the runtime outside it, but never past the card itself: at
    --cuda-memory-fraction 1.0 a V100's budget is its 16,160 MiB, not that plus a GiB it does not have."""
    plan = plan_llm(LlmRequest("V100-16GB", "tinyllama-1.1b", memory_fraction=1.0))
    assert plan["memory"]["per_gpu"]["budget_bytes"] == plan["memory"]["per_gpu"]["card_total_bytes"] == 16160 * 2**20


def test_a_kv_cache_of_exactly_the_tokens_needed_fits_and_says_how_many_requests_it_holds() -> None:
    """With 1000-token prompts the warm-up prefill, so the KV room, stays the same whatever --max-total-tokens is:
    8,405 tokens on an L4 for Llama-2-7B. Asking for exactly that many fits (a strict ">" would say not); one more
    does not. The reason counts whole requests (4 of 2000 tokens, not 4.2025)."""
    budget = int(23_570_219_008 * 0.9 * 0.9)
    prefill = 1000 * 4096 * 2 * 12 + 32000 * 4 * 256
    capacity = (budget - llm_weight_bytes(LLMS["llama-2-7b"]) - TGI_RUNTIME_BYTES - prefill) // 524_288
    assert capacity == 8405

    def plan(total: int) -> dict:
        return plan_llm(LlmRequest("L4", "llama-2-7b", max_input_tokens=1000, max_total_tokens=total, quantize="none"))

    exact, over = plan(capacity), plan(capacity + 1)
    assert exact["fits"] and exact["memory"]["kv_token_capacity"] == capacity
    assert not over["fits"] and over["memory"]["kv_token_capacity"] == capacity
    reason = plan(2000)["reasons"][0]
    assert reason.startswith("the KV cache holds about 8,405 tokens per replica: 4 concurrent requests at --max-total")


def test_auto_never_plans_4_bit_weights_on_a_card_without_marlin() -> None:
    """AWQ and GPTQ run on TGI's Marlin kernels (compute capability 8.0+): auto tries them only where they run.
    Llama-2-13B does not fit a T4 at 16 or 8 bits; trying AWQ there would say it fits, with weights the T4 cannot
    run, and no warning (the Marlin one is for a quantization asked for)."""
    plan = plan_llm(LlmRequest("T4", "llama-2-13b"))
    assert not plan["fits"] and [f["quantize"] for f in plan["considered"]] == ["none", "bitsandbytes"]
    assert plan["flags"]["--quantize"] == "bitsandbytes"


def test_bitsandbytes_4_bit_weights_by_hand() -> None:
    """TGI's bitsandbytes-nf4/fp4 (Params4bit, compress_statistics=True, bitsandbytes' blocksize 64): two codes a byte,
    an 8-bit absmax per 64 weights, an fp32 scale per 256 of those; embedding and head stay fp16, as for AWQ."""
    mistral = LLMS["mistral-7b"]
    embed = 2 * 32000 * 4096
    per_param = 0.5 + 1 / 64 + 4 / (64 * 256)
    assert per_param == 0.515869140625
    for kind in ("bitsandbytes-nf4", "bitsandbytes-fp4"):  # NF4 and FP4 differ in their code values, not their size
        assert llm_weight_bytes(mistral, kind) == int((7.24e9 - embed) * per_param + embed * 2) == 4_123_948_578
    plan = plan_llm(LlmRequest("L4", "mistral-7b", quantize="bitsandbytes-fp4"))
    assert plan["weights_bytes_by_quantization"]["bitsandbytes-nf4"] == 4_123_948_578
    assert plan["memory"]["per_gpu"]["weights_bytes"] == 4_123_948_578


def test_bitsandbytes_8_bit_weights_by_hand() -> None:
    """TGI's --quantize bitsandbytes (Linear8bitLt, Int8Params) keeps int8 weights and one fp32 scale per output row
    (bitsandbytes' int8_vectorwise_quant makes its row_stats float32): 4 bytes per row of ~4096, not 2."""
    mistral = LLMS["mistral-7b"]
    embed = 2 * 32000 * 4096
    assert llm_weight_bytes(mistral, "bitsandbytes") == int((7.24e9 - embed) * (1 + 4 / 4096) + embed * 2)


def test_a_model_that_fits_only_at_4_bits_is_planned_with_bitsandbytes_nf4_where_tgi_makes_it() -> None:
    """Llama-2-13B with two 4096-token requests fits an L4 at 4 bits, not at 8: bitsandbytes-nf4 asked for is planned
    from the model's own checkpoint (TGI quantizes it at load, no placeholder), without --dtype (TGI refuses both)."""
    request = dict(max_total_tokens=4096, concurrent_requests=2)
    assert not plan_llm(LlmRequest("L4", "llama-2-13b", quantize="eetq", **request))["fits"]
    nf4 = plan_llm(LlmRequest("L4", "llama-2-13b", quantize="bitsandbytes-nf4", **request))
    m = nf4["memory"]["per_gpu"]
    kv = m["budget_bytes"] - llm_weight_bytes(LLMS["llama-2-13b"], "bitsandbytes-nf4") - TGI_RUNTIME_BYTES
    assert nf4["memory"]["kv_token_capacity"] == (kv - m["prefill_activation_bytes"]) // (2 * 40 * 40 * 128 * 2) >= 8192
    assert nf4["fits"] and nf4["flags"]["--quantize"] == "bitsandbytes-nf4" and "--dtype" not in nf4["flags"]
    assert nf4["launch"].startswith("text-generation-launcher --model-id meta-llama/Llama-2-13b-hf --num-shard 1 ")
    assert nf4["launch"].endswith(" --quantize bitsandbytes-nf4")
    assert "--quantize bitsandbytes-nf4 as asked" in nf4["reasons"]
    assert not any("ahead of time" in w or "Marlin" in w for w in nf4["warnings"])
    fp4 = plan_llm(LlmRequest("L4", "llama-2-13b", quantize="bitsandbytes-fp4", **request))
    assert fp4["fits"] and fp4["launch"] == nf4["launch"].replace("bitsandbytes-nf4", "bitsandbytes-fp4")
    # auto keeps AWQ as its 4-bit (Marlin's kernels, as many bytes), and its placeholder warning names nf4 instead
    auto = plan_llm(LlmRequest("L4", "llama-2-13b", **request))
    assert [f["quantize"] for f in auto["considered"]] == ["none", "eetq", "awq"] and auto["fits"]
    assert any(
        w.endswith("--quantize bitsandbytes-nf4 to 4 bits (slower than AWQ's kernels)") for w in auto["warnings"]
    )


def test_bitsandbytes_4_bit_is_ignored_by_tgis_non_flash_path() -> None:
    """TGI's non-flash path (a T4, a V100) passes transformers only load_in_8bit: bitsandbytes-nf4 or -fp4 asked for
    loads fp16 weights. Llama-2-13B would fit a T4's 16 GB at 4 bits; it is planned, and refused, as the fp16 it loads,
    with no 4-bit advice (neither AWQ nor nf4 runs there)."""
    for kind in ("bitsandbytes-nf4", "bitsandbytes-fp4"):
        plan = plan_llm(LlmRequest("T4", "llama-2-13b", quantize=kind))
        assert [f["quantize"] for f in plan["considered"]] == ["none"] and not plan["fits"]
        assert "--quantize" not in plan["flags"] and plan["flags"]["--dtype"] == "float16"
        assert (
            f"quantizes only with 8-bit bitsandbytes: --quantize {kind} is ignored there and the weights load in "
            "fp16 (ask for bitsandbytes)" in str(plan["warnings"])
        )
        assert plan["warnings"][-1].endswith("(1 x 4096); try a larger GPU or shorter sequences")
        assert not any("Marlin" in w for w in plan["warnings"])  # bitsandbytes' kernels are not Marlin's
    # nor does auto try it there: 8-bit bitsandbytes is the most the T4 gets
    assert [f["quantize"] for f in plan_llm(LlmRequest("T4", "llama-2-13b"))["considered"]] == ["none", "bitsandbytes"]


def test_4_bit_advice_is_left_out_once_bitsandbytes_4_bit_was_tried() -> None:
    """nf4 asked for and still too small: 4-bit weights are no advice (AWQ takes as many bytes)."""
    plan = plan_llm(LlmRequest("A10G", "llama-2-13b", count=8, concurrent_requests=1000, quantize="bitsandbytes-nf4"))
    assert not plan["fits"] and plan["flags"]["--quantize"] == "bitsandbytes-nf4"
    assert "try a larger GPU, an 8-bit KV cache (--kv-cache-dtype fp8_e4m3fn), fewer" in plan["warnings"][-1]
    assert "4-bit" not in plan["warnings"][-1]


def test_every_card_is_in_the_cost_table_or_named_as_unpriced_never_both() -> None:
    """A card measured but unpriced has its row (its measured throughput, no cost): the notes' "left out, with no
    price" must not name it too, as they did when unpriced_cards ignored the measured card."""
    from engine.bench.planner import unpriced_cards

    book = PriceBook.defaults()
    measured = CATALOG["H100-PCIe"]  # no indicative price
    shown = {r["gpu"] for r in cost_table(10.0, "fp16", measured, book)}
    left_out = unpriced_cards(book, measured)
    assert "H100-PCIe" in shown and "H100-PCIe" not in left_out and "H200-NVL" in left_out
    assert shown.isdisjoint(left_out) and shown | set(left_out) == set(CATALOG)


def test_the_longest_alias_names_the_board() -> None:
    """The alias "RTX 4090" is a whole token of "RTX 4090 D" too: the 4090 D (fewer cores, its own rates) is named by
    the longest alias that matches; the shortest would have given it the 4090's rates."""
    assert find_gpu("NVIDIA GeForce RTX 4090 D").key == "RTX-4090D-48GB"
    assert find_gpu("NVIDIA GeForce RTX 4090").key == "RTX-4090"


def test_tensor_cores_and_fp8_start_where_nvidia_put_them() -> None:
    """Tensor cores from Volta (7.0), FP8 from Ada (8.9): one step later, a V100 plan would be warned "no tensor cores"
    and steered to fp32, and FP8 weights on an L4 warned that it may not run them."""
    v100 = plan_model_memory(CATALOG["V100-16GB"], 72_600_000, 2_000_000, "fp16")
    assert v100.recommended_precision == "fp16" and not any("tensor cores" in w for w in v100.warnings)
    ada = plan_llm(LlmRequest("L4", "mistral-7b", quantize="fp8"))
    assert ada["flags"]["--quantize"] == "fp8" and not any("FP8 weights need" in w for w in ada["warnings"])


def test_a_reports_card_keeps_its_capability_and_a_total_it_lacks_is_the_catalogs() -> None:
    """A report's "8.6" is compute capability (8, 6), not (6, 8); a report that gives no usable total (missing, or 0) is
    planned at the catalog's total for its card, not at 0 bytes."""
    from engine.bench.catalog import Gpu, report_gpu

    def report(**gpu: object) -> dict:
        return {"machine": {"gpu": {"name": "NVIDIA GeForce RTX 3080", **gpu}}}

    uncatalogued = report_gpu(report(memory_bytes=10 * 2**30, compute_capability="8.6"))
    assert (
        uncatalogued.key == "detected" and uncatalogued.compute_capability == (8, 6) and uncatalogued.supports("bf16")
    )
    for memory in ({}, {"memory_bytes": 0}):
        a100 = report_gpu({"machine": {"gpu": {"name": "NVIDIA A100-SXM4-80GB", **memory}}})
        assert a100.key == "A100-80GB" and a100.memory_bytes == CATALOG["A100-80GB"].memory_bytes == 85_100_068_864
    # an entry with neither total knows the box's size, in GB of 10^9 bytes
    bare = Gpu("x", "x", 24, 0.0, dict.fromkeys(("fp32", "tf32", "fp16", "bf16", "int8")), (8, 0), False)
    assert bare.memory_bytes == 24 * 10**9


def test_a_price_files_changes_keep_an_edited_source_of_an_unchanged_price(tmp_path) -> None:
    """A visitor who corrects only where a price came from saves that correction: comparing prices alone would drop
    it, and the catalog's source would come back on the next load."""
    base = PriceBook.defaults()
    edited = PriceBook.load()
    edited.update({"T4": base.prices["T4"]}, {"T4": "my provider's invoice, 2026-12"})
    own = tmp_path / "own.json"
    edited.save(own, base)
    assert json.loads(own.read_text()) == {
        "prices": {"T4": base.prices["T4"]},
        "sources": {"T4": "my provider's invoice, 2026-12"},
    }
    assert PriceBook.load(own).sources["T4"] == "my provider's invoice, 2026-12"


# Qwen3-8B's config.json (the keys the planner reads): a model type TGI has no class of its own for
QWEN3_8B = dict(model_type="qwen3", hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                max_position_embeddings=40960, attention_bias=False, tie_word_embeddings=False,
                _name_or_path="Qwen/Qwen3-8B")  # fmt: skip


def _llm_config(folder: Path, values: dict[str, Any], weights: bool = False) -> Path:
    """A model's config.json in `folder`; with `weights`, a small .safetensors file beside it to count."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(values))
    if weights:
        save_file({"w": torch.zeros(8, 8)}, folder / "model.safetensors")
    return folder / "config.json"


@pytest.mark.parametrize("quantize", ["awq", "gptq", "eetq", "bitsandbytes-nf4", "bitsandbytes-fp4"])
def test_tgis_generic_path_refuses_the_quantizations_it_refuses_on_any_card(tmp_path: Path, quantize: str) -> None:
    """A model type without a class of its own in TGI (qwen3) reaches get_model's generic path, which raises "...
    is not supported for AutoModel" for these before it loads anything, whatever the card: refused, naming the model
    type and what loads. A type with a class of its own (qwen2) is planned with them as before."""
    config = _llm_config(tmp_path / "qwen3", QWEN3_8B)
    for gpu in ("L4", "V100-16GB"):
        with pytest.raises(PlanError) as refused:
            plan_llm(LlmRequest(gpu, config=config, quantize=quantize))
        assert str(refused.value) == (
            "TGI has no model class of its own for model type 'qwen3' (Qwen/Qwen3-8B): its generic path "
            f"(transformers' class) refuses --quantize {quantize} ({quantize} is not supported for AutoModel); it "
            "loads 16-bit weights (quantize none or auto) or 8-bit bitsandbytes (quantize bitsandbytes)"
        )
    qwen2 = _llm_config(tmp_path / "qwen2", {**QWEN3_8B, "model_type": "qwen2"})
    assert plan_llm(LlmRequest("L4", config=qwen2, quantize=quantize))["flags"]["--quantize"] == quantize


def test_tgis_generic_path_refuses_a_checkpoint_quantized_with_awq(tmp_path: Path) -> None:
    """get_model picks --quantize awq from the checkpoint's quantization_config itself, then its generic path
    refuses it: quantize auto (the checkpoint's own) is refused too."""
    awq = {**QWEN3_8B, "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}}
    with pytest.raises(
        PlanError, match=r"^TGI has no model class .* 'qwen3' .* refuses a checkpoint quantized with awq"
    ):
        plan_llm(LlmRequest("L4", config=_llm_config(tmp_path, awq)))


def test_tgis_generic_path_is_planned_on_one_gpu_with_8_bit_bitsandbytes_at_most(tmp_path: Path) -> None:
    """On an L4 (flash attention) qwen3 runs transformers' class: auto tries fp16 and 8-bit bitsandbytes only (no
    EETQ, no AWQ), one GPU per replica (more serve replicas), --max-batch-total-tokens stated (CausalLM.fallback needs
    it; TransformersFlashCausalLM ignores it), the warning says which path runs; advice without more GPUs, 4-bit
    weights or an 8-bit KV cache, none of which it takes."""
    config = _llm_config(tmp_path, QWEN3_8B)
    crowded = plan_llm(LlmRequest("L4", config=config, count=2, concurrent_requests=16, max_total_tokens=4096))
    assert [(f["quantize"], f["shards"]) for f in crowded["considered"]] == [("none", 1), ("bitsandbytes", 1)]
    assert not crowded["fits"] and crowded["flags"]["--num-shard"] == 1
    assert crowded["warnings"][-1].endswith("try a larger GPU, fewer concurrent requests or shorter sequences")
    assert crowded["warnings"][0] == (
        "TGI has no model class of its own for model type 'qwen3': it serves Qwen/Qwen3-8B through transformers' "
        "class (only where transformers maps the type to a causal LM; TGI refuses it otherwise), as "
        "TransformersFlashCausalLM where that class supports TGI's attention backend, else CausalLM.fallback "
        "(padded KV cache; --max-batch-total-tokens is stated for it and ignored by the other); it quantizes only "
        "with 8-bit bitsandbytes and is planned on one GPU (--num-shard 1): TGI shards it only through "
        "transformers' tensor-parallel plan, where its class has one"
    )
    two = plan_llm(LlmRequest("L4", config=config, count=2, max_total_tokens=4096))
    assert two["fits"] and two["replicas"] == 2 and two["flags"]["--num-shard"] == 1
    assert two["flags"]["--max-batch-total-tokens"] == two["memory"]["kv_token_capacity"] > 4096
    assert "TGI cannot shard it further: its generic path (transformers' class) is planned on one GPU" in str(
        two["reasons"]
    )
    # the same shape as a model type TGI has a flash class for: sharded over both cards, TGI sizes its batch
    v100 = plan_llm(LlmRequest("V100-16GB", config=config, count=2))  # no flash attention: CausalLM.fallback alone
    assert v100["warnings"][0].endswith(
        "otherwise), as CausalLM.fallback; it quantizes only with 8-bit bitsandbytes and is planned on one GPU "
        "(--num-shard 1): CausalLM.fallback does not shard"
    )
    qwen2 = _llm_config(tmp_path / "qwen2", {**QWEN3_8B, "model_type": "qwen2"})
    flash = plan_llm(LlmRequest("L4", config=qwen2, count=2, concurrent_requests=16, max_total_tokens=4096))
    assert [(f["quantize"], f["shards"]) for f in flash["considered"]] == [("none", 1), ("none", 2)]
    assert flash["fits"] and "--max-batch-total-tokens" not in flash["flags"]
    assert [f["quantize"] for f in plan_llm(LlmRequest("L4", config=qwen2, concurrent_requests=64))["considered"]] == [
        "none", "eetq", "awq"
    ]  # fmt: skip


def test_tgis_generic_path_ignores_fp8_weights_and_an_8_bit_kv_cache(tmp_path: Path) -> None:
    """On an H100 the generic path loads transformers' class with load_in_8bit alone and passes no --kv-cache-dtype:
    fp8 weights and an fp8 KV cache asked for are planned, and launched, as the 16-bit ones that load, said so."""
    config = _llm_config(tmp_path, QWEN3_8B)
    plan = plan_llm(LlmRequest("H100", config=config, quantize="fp8", kv_cache_dtype="fp8_e4m3fn"))
    spec = spec_from_config(config)
    assert plan["memory"]["per_gpu"]["weights_bytes"] == llm_weight_bytes(spec, "none")
    assert plan["memory"]["kv_bytes_per_token"] == 2 * 36 * 8 * 128 * 2
    assert "--quantize" not in plan["flags"] and "--kv-cache-dtype" not in plan["flags"]
    assert plan["flags"]["--dtype"] == "bfloat16"
    assert (
        "--kv-cache-dtype fp8_e4m3fn is ignored by TGI's generic path (transformers' class): the KV cache is planned, "
        "and launched, in the model's 16-bit type" in plan["warnings"]
    )
    assert (
        "TGI's generic path loads the model through transformers and quantizes only with 8-bit bitsandbytes: "
        "--quantize fp8 is ignored there and the weights load in fp16 (ask for bitsandbytes)" in plan["warnings"]
    )


def test_a_multimodal_config_takes_tgis_path_by_its_outer_model_type(tmp_path: Path) -> None:
    """TGI's get_model reads the config's own model_type, not its text_config's: LLaVA 1.5 ("llava") around a
    Mistral has no class in TGI (generic path: EETQ refused), LLaVA-NeXT ("llava_next") around a qwen3 has a flash one
    (EETQ planned on an L4)."""
    text = {**QWEN3_8B, "model_type": "mistral"}
    llava = spec_from_config(_llm_config(tmp_path / "llava", {"model_type": "llava", "text_config": text}, True))
    assert llava.model_type == "llava" and tgi_generic_path(llava)
    with pytest.raises(PlanError, match=r"model type 'llava' .* refuses --quantize eetq"):
        plan_llm(LlmRequest("L4", config=tmp_path / "llava" / "config.json", quantize="eetq"))
    nested = {"model_type": "llava_next", "text_config": QWEN3_8B}
    plan = plan_llm(LlmRequest("L4", config=_llm_config(tmp_path / "next", nested, True), quantize="eetq"))
    assert plan["model"]["model_type"] == "llava_next" and plan["flags"]["--quantize"] == "eetq"


def test_a_vision_language_type_tgi_serves_only_with_flash_attention_is_refused_below_8_0(tmp_path: Path) -> None:
    """get_model raises "Qwen2_VL requires Flash Attention enabled models." without flash attention (a T4, a V100):
    refused with the card's compute capability, where it was planned; on an L4 it plans as before."""
    config = _llm_config(tmp_path / "vl", {**QWEN3_8B, "model_type": "qwen2_vl"}, True)
    for gpu, capability in (("T4", "7.5"), ("V100-16GB", "7.0")):
        with pytest.raises(PlanError) as refused:
            plan_llm(LlmRequest(gpu, config=config))
        assert str(refused.value).startswith(
            f"TGI serves model type 'qwen2_vl' (Qwen/Qwen3-8B) only on its flash path, which needs compute "
            f"capability 8.0+; {CATALOG[gpu].name} has {capability} "
        )
    assert plan_llm(LlmRequest("L4", config=config))["model"]["model_type"] == "qwen2_vl"
    assert plan_llm(LlmRequest("T4", config=_llm_config(tmp_path / "qwen2", {**QWEN3_8B, "model_type": "qwen2"}, True)))


def test_an_fp8_checkpoint_on_the_non_flash_path_is_not_told_to_ask_for_bitsandbytes(tmp_path: Path) -> None:
    """A checkpoint quantized ahead of time takes only auto or its own --quantize (bitsandbytes is refused): on a
    T4 its FP8 weights are planned at 16 bits, and the warning no longer points at a request the plan refuses."""
    fp8 = {**QWEN3_8B, "model_type": "llama", "quantization_config": {"quant_method": "fp8"}}
    plan = plan_llm(LlmRequest("T4", config=_llm_config(tmp_path / "fp8", fp8)))
    assert (
        "TGI's non-flash path loads the model through transformers and quantizes only with 8-bit bitsandbytes: this "
        "checkpoint's fp8 weights are planned at 16 bits, the most they take there" in plan["warnings"]
    )
    assert not any("ask for bitsandbytes" in w for w in plan["warnings"])


def test_the_presets_are_model_types_tgi_has_flash_classes_for() -> None:
    """The presets keep TGI's flash path on a card with flash attention: their model types are in the table."""
    assert {spec.key: spec.model_type for spec in LLMS.values()} == {
        "tinyllama-1.1b": "llama", "phi-2": "phi", "gemma-2b": "gemma", "mistral-7b": "mistral",
        "llama-2-7b": "llama", "llama-2-13b": "llama",
    }  # fmt: skip
    assert all(spec.model_type in TGI_FLASH_MODEL_TYPES and not tgi_generic_path(spec) for spec in LLMS.values())


# facebook/opt-6.7b's config.json (the keys the planner reads): a model type TGI serves through its own non-flash
# CausalLM on every card
OPT_6_7B = dict(model_type="opt", hidden_size=4096, ffn_dim=16384, num_hidden_layers=32, num_attention_heads=32,
                vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=4096,
                _name_or_path="facebook/opt-6.7b")  # fmt: skip


def test_tgis_own_non_flash_class_sizes_no_cache_from_free_memory_even_on_an_h100(tmp_path: Path) -> None:
    """get_model serves OPT through CausalLM's constructor whatever the card: on an H100 the plan takes the non-flash
    memory rule (torch's allocator stops at the fraction; no cache preallocated), states --max-batch-total-tokens,
    and drops an fp8 KV cache CausalLM never takes; FP8 weights, made by TGI's own weight loader, stay. The same
    shape as llama (a flash class) keeps the flash rule."""
    config = _llm_config(tmp_path / "opt", OPT_6_7B, True)
    plan = plan_llm(LlmRequest("H100", config=config, quantize="fp8", kv_cache_dtype="fp8_e4m3fn"))
    h100 = CATALOG["H100"]
    assert plan["memory"]["per_gpu"]["budget_bytes"] == tgi_budget_bytes(h100, 0.9, False, TGI_RUNTIME_BYTES)
    assert plan["flags"]["--max-batch-total-tokens"] == plan["memory"]["kv_token_capacity"] > 0
    assert plan["memory"]["kv_bytes_per_token"] == 2 * 32 * 32 * 128 * 2
    assert plan["flags"]["--quantize"] == "fp8" and "--kv-cache-dtype" not in plan["flags"]
    assert plan["memory"]["per_gpu"]["weights_bytes"] == llm_weight_bytes(spec_from_config(config), "fp8")
    assert plan["warnings"] == [
        "TGI serves model type 'opt' (facebook/opt-6.7b) through its own non-flash CausalLM class on every card: no "
        "flash or paged attention, each request's KV cache is padded and grown in torch's allocator rather than "
        "preallocated from free memory (--max-batch-total-tokens is stated), and --kv-cache-dtype does not apply; "
        "it shards over GPUs and quantizes at load as the flash path does",
        "--kv-cache-dtype fp8_e4m3fn is ignored by TGI's non-flash path: the KV cache is planned, and launched, in "
        "the model's 16-bit type",
    ]
    llama = _llm_config(tmp_path / "llama", {**OPT_6_7B, "model_type": "llama"}, True)
    flash = plan_llm(LlmRequest("H100", config=llama, quantize="fp8", kv_cache_dtype="fp8_e4m3fn"))
    assert flash["memory"]["per_gpu"]["budget_bytes"] == tgi_budget_bytes(h100, 0.9, True, TGI_RUNTIME_BYTES)
    assert "--max-batch-total-tokens" not in flash["flags"] and flash["flags"]["--kv-cache-dtype"] == "fp8_e4m3fn"
    # T5 (TGI's Seq2SeqLM) is an encoder-decoder: its config is refused before the plan (tests/test_llm_configs.py)
    with pytest.raises(LlmConfigError, match="describes an encoder-decoder model"):
        plan_llm(LlmRequest("H100", config=_llm_config(tmp_path / "t5", {**OPT_6_7B, "model_type": "t5"}, True)))


def test_tgis_own_non_flash_class_shards_and_quantizes_below_8_0(tmp_path: Path) -> None:
    """On a T4 CausalLM still shards (torch.distributed, heads split) and TGI's weight loader still makes EETQ and
    bitsandbytes-nf4 (CausalLM.fallback would do neither): auto tries EETQ, a second card shards, the advice names
    more GPUs and nf4 but no 8-bit KV cache, and replicas blame the heads, not the path, where they do not split."""
    config = _llm_config(tmp_path / "opt", OPT_6_7B, True)
    crowded = plan_llm(LlmRequest("T4", config=config, concurrent_requests=64))
    assert [f["quantize"] for f in crowded["considered"]] == ["none", "eetq"]
    assert crowded["warnings"][-1].endswith(
        "try a larger GPU, more GPUs (--count 2 shards it further), 4-bit weights (bitsandbytes-nf4 to quantize this "
        "checkpoint at load), fewer concurrent requests or shorter sequences"
    )
    assert not any("cannot shard" in w for w in crowded["warnings"])
    two = plan_llm(LlmRequest("T4", config=config, count=2, concurrent_requests=16))
    assert [(f["quantize"], f["shards"]) for f in two["considered"]] == [("none", 1), ("none", 2)]
    assert two["fits"] and two["flags"]["--num-shard"] == 2 and two["flags"]["--max-batch-total-tokens"] >= 16 * 2048
    nf4 = plan_llm(LlmRequest("T4", config=config, quantize="bitsandbytes-nf4"))
    assert nf4["flags"]["--quantize"] == "bitsandbytes-nf4" and not any("ignored" in w for w in nf4["warnings"])
    odd = _llm_config(tmp_path / "odd", {**OPT_6_7B, "hidden_size": 4000, "num_attention_heads": 25}, True)
    replicas = plan_llm(LlmRequest("T4", config=odd, count=2))  # 25 heads do not split over 2 shards
    assert replicas["replicas"] == 2 and replicas["reasons"][0].endswith(
        "TGI cannot shard it further: its heads do not split over more GPUs (25 query, 25 KV)"
    )


def test_legacy_phi_msft_is_refused_where_flash_attention_runs(tmp_path: Path) -> None:
    """get_model raises "Legacy phi-msft is not supported with Flash Attention" where flash attention loads: refused
    on an L4 or H100, planned on a T4 through CausalLM."""
    config = _llm_config(tmp_path / "phi", {**OPT_6_7B, "model_type": "phi-msft"}, True)
    for gpu, capability in (("L4", "8.9"), ("H100", "9.0")):
        with pytest.raises(PlanError) as refused:
            plan_llm(LlmRequest(gpu, config=config))
        assert str(refused.value) == (
            "TGI refuses model type 'phi-msft' (facebook/opt-6.7b) where flash attention runs (Legacy phi-msft is not "
            "supported with Flash Attention): it serves it only below compute capability 8.0, through its non-flash "
            f"CausalLM; {CATALOG[gpu].name} has {capability}: plan it on a T4 or V100, or use a checkpoint converted "
            "to transformers' phi"
        )
    assert plan_llm(LlmRequest("T4", config=config))["warnings"][0].startswith(
        "TGI serves model type 'phi-msft' (facebook/opt-6.7b) through its own non-flash CausalLM class"
    )


def test_legacy_phi_msft_is_planned_on_one_gpu_where_sharding_would_break_its_class(tmp_path: Path) -> None:
    """TGI's phi-msft class splits its fused Wqkv over the shards but views it with every head (and loads its MLP
    whole on each shard): sharded, it breaks. On two T4s the plan stays on one GPU, its advice names no more GPUs and
    its warning says why, where OPT of the same shape shards."""
    config = _llm_config(tmp_path / "phi", {**OPT_6_7B, "model_type": "phi-msft"}, True)
    plan = plan_llm(LlmRequest("T4", config=config, count=2, concurrent_requests=16))
    assert [(f["quantize"], f["shards"]) for f in plan["considered"]] == [("none", 1), ("eetq", 1)]
    assert not plan["fits"] and plan["flags"]["--num-shard"] == 1
    assert plan["warnings"][0].endswith(
        "--kv-cache-dtype does not apply; it quantizes at load as the flash path does but is planned on one GPU "
        "(--num-shard 1): its attention keeps every head on each shard, so sharding breaks it"
    )
    assert plan["warnings"][-1].endswith(
        "try a larger GPU, 4-bit weights (bitsandbytes-nf4 to quantize this checkpoint at load), fewer concurrent "
        "requests or shorter sequences"
    )
    replicas = plan_llm(LlmRequest("T4", config=config, count=2))
    assert replicas["replicas"] == 2 and replicas["reasons"][0].endswith(
        "TGI cannot shard it further: its class for model type 'phi-msft' runs on one GPU"
    )
    opt = plan_llm(
        LlmRequest("T4", config=_llm_config(tmp_path / "opt", OPT_6_7B, True), count=2, concurrent_requests=16)
    )
    assert opt["fits"] and opt["flags"]["--num-shard"] == 2


@pytest.mark.parametrize("model_type", ["mpt", "phi-msft"])
def test_tgis_mpt_and_phi_msft_classes_load_no_awq_or_gptq_checkpoint(tmp_path: Path, model_type: str) -> None:
    """MPT's fused Wqkv (load_col, which also asserts against GPTQ) and phi-msft's MLP (FastLinear.load) read
    `.weight` past TGI's weight loader, which an AWQ or GPTQ checkpoint does not hold: asked for, they are refused;
    auto never picks AWQ nor advises it (on an A100 for MPT, a T4 for phi-msft, which TGI refuses on 8.0+), where OPT
    of the same shape takes it."""
    gpu = "A100-80GB" if model_type == "mpt" else "T4"
    config = _llm_config(tmp_path / model_type, {**OPT_6_7B, "model_type": model_type}, True)
    for quantize in ("awq", "gptq"):
        with pytest.raises(PlanError) as refused:
            plan_llm(LlmRequest(gpu, config=config, quantize=quantize))
        assert str(refused.value) == (
            f"TGI's own class for model type {model_type!r} (facebook/opt-6.7b) cannot load --quantize {quantize}: it "
            "reads some layers as 16-bit tensors, past its weight loader, where an "
            f"{quantize.upper()} checkpoint holds none; plan a 16-bit checkpoint (quantize auto, none, or one TGI "
            "makes at load: eetq, fp8, bitsandbytes)"
        )
    crowded = plan_llm(LlmRequest(gpu, config=config, concurrent_requests=100_000))
    assert [f["quantize"] for f in crowded["considered"]] == ["none", "eetq"]
    assert (
        "--quantize awq" not in crowded["warnings"][-1] and "4-bit weights (bitsandbytes-nf4" in crowded["warnings"][-1]
    )
    opt = plan_llm(
        LlmRequest("A100-80GB", config=_llm_config(tmp_path / "opt", OPT_6_7B, True), concurrent_requests=100_000)
    )
    assert [f["quantize"] for f in opt["considered"]] == ["none", "eetq", "awq"]


@pytest.mark.parametrize(
    ("model_type", "alibi", "gpu", "flags"),
    [
        # (flash_attention, generic, causal_lm, paged, flash_path, own_loader, shards_heads, awq_loads, fallback,
        #  alibi_fallback)
        ("llama", False, "A100-80GB", (True, False, False, True, True, True, True, True, False, False)),
        ("llama", False, "T4", (False, False, False, False, False, False, False, False, True, False)),  # fallback
        ("falcon", False, "V100-16GB", (False, False, False, False, False, False, False, False, True, False)),
        ("", False, "T4", (False, False, False, False, False, False, False, False, True, False)),  # as TGI's types
        ("qwen3", False, "L4", (True, True, False, True, False, False, False, True, False, False)),  # TransformersFlash
        ("qwen3", False, "T4", (False, True, False, False, False, False, False, False, True, False)),  # fallback too
        ("opt", False, "H100", (True, False, True, False, False, True, True, True, False, False)),  # CausalLM anywhere
        ("bloom", False, "T4", (False, False, True, False, False, True, True, True, False, False)),  # its own loader
        ("mpt", False, "A100-80GB", (True, False, True, False, False, True, True, False, False, False)),
        ("phi-msft", False, "T4", (False, False, True, False, False, True, False, False, False, False)),  # one GPU
        ("llava_next", False, "T4", (False, False, False, False, False, False, False, True, False, False)),  # refused
        ("mamba", False, "V100-16GB", (False, False, False, False, False, False, False, True, False, False)),  # Mamba
        ("falcon", False, "A100-80GB", (True, False, False, True, True, True, True, True, False, False)),
        ("falcon", True, "A100-80GB", (True, False, False, False, False, False, False, False, True, True)),  # ALiBi
        ("RefinedWebModel", True, "T4", (False, False, False, False, False, False, False, False, True, True)),
        ("llama", True, "A100-80GB", (True, False, False, True, True, True, True, True, False, False)),  # Falcon's key
    ],
)
def test_the_path_tgi_serves_a_model_by_is_get_models_choice_of_class(
    model_type: str, alibi: bool, gpu: str, flags: tuple[bool, ...]
) -> None:
    """TgiPath.of says which of get_model's classes runs a model type on a card, and so what it takes: the table
    of what each path does (paged cache, 8-bit KV cache, TGI's weight loader, sharding, AWQ checkpoints)."""
    spec = replace(LLMS["llama-2-7b"], model_type=model_type, alibi=alibi)
    path = TgiPath.of(spec, CATALOG[gpu])
    names = (
        "flash_attention",
        "generic",
        "causal_lm",
        "paged",
        "flash_path",
        "own_loader",
        "shards_heads",
        "awq_loads",
        "fallback",
        "alibi_fallback",
    )
    assert tuple(getattr(path, name) for name in names) == flags


# tiiuae/falcon-rw-1b's config.json (the keys the planner and TGI's get_model read): a Falcon with ALiBi positions
FALCON_RW_1B = dict(model_type="falcon", alibi=True, hidden_size=2048, num_hidden_layers=24, num_attention_heads=32,
                    multi_query=False, new_decoder_architecture=False, parallel_attn=False, bias=True,
                    vocab_size=50304, _name_or_path="tiiuae/falcon-rw-1b")  # fmt: skip
ALIBI_WARNING = (
    "TGI serves tiiuae/falcon-rw-1b (model type 'falcon' with alibi: true) through transformers' own class on every "
    "card (CausalLM.fallback: its flash Falcon class is for rotary positions): no flash or paged attention, each "
    "request's KV cache is padded and grown in torch's allocator (--max-batch-total-tokens is stated), "
    "--kv-cache-dtype does not apply, it quantizes only with 8-bit bitsandbytes, and it is planned on one GPU "
    "(--num-shard 1): TGI refuses it sharded ({})"
)


def test_a_falcon_with_alibi_is_planned_as_tgis_transformers_fallback_on_one_gpu(tmp_path: Path) -> None:
    """get_model keeps its flash Falcon class for rotary Falcons: with alibi: true it raises "sharded is not supported
    for this model" sharded and serves it unsharded through CausalLM.fallback (transformers' class, load_in_8bit
    alone, a padded cache, no --kv-cache-dtype), even on an A100. Planned so: one GPU per replica, the non-flash
    budget, --max-batch-total-tokens stated, fp16 or 8-bit bitsandbytes tried, a 16-bit KV cache, advice without
    more GPUs, 4-bit weights or an 8-bit cache. The same shape without ALiBi takes the flash path and shards."""
    config = _llm_config(tmp_path / "rw", FALCON_RW_1B, True)
    a100 = CATALOG["A100-80GB"]
    crowded = plan_llm(
        LlmRequest("A100-80GB", config=config, count=2, concurrent_requests=100_000, kv_cache_dtype="fp8_e4m3fn")
    )
    assert [(f["quantize"], f["shards"]) for f in crowded["considered"]] == [("none", 1), ("bitsandbytes", 1)]
    assert crowded["memory"]["per_gpu"]["budget_bytes"] == tgi_budget_bytes(a100, 0.9, False, TGI_RUNTIME_BYTES)
    assert crowded["memory"]["kv_bytes_per_token"] == 2 * 24 * 32 * 64 * 2
    assert crowded["warnings"][0] == ALIBI_WARNING.format("sharded is not supported for this model")
    assert "--kv-cache-dtype fp8_e4m3fn is ignored by TGI's non-flash path" in crowded["warnings"][1]
    assert crowded["warnings"][-1].endswith("try a larger GPU, fewer concurrent requests or shorter sequences")
    two = plan_llm(LlmRequest("A100-80GB", config=config, count=2))
    assert two["fits"] and two["replicas"] == 2 and two["flags"]["--num-shard"] == 1
    assert two["flags"]["--max-batch-total-tokens"] == two["memory"]["kv_token_capacity"] > 2048
    assert two["reasons"][0].endswith("TGI cannot shard it further: it refuses a Falcon with ALiBi sharded")
    # below 8.0 every Falcon runs CausalLM.fallback: the warning quotes the refusal TGI gives there
    t4 = plan_llm(LlmRequest("T4", config=config))
    assert t4["warnings"] == [ALIBI_WARNING.format("Sharded Falcon requires Flash Attention enabled models")]
    rotary = _llm_config(tmp_path / "rotary", {**FALCON_RW_1B, "alibi": False}, True)
    flash = plan_llm(
        LlmRequest("A100-80GB", config=rotary, count=2, concurrent_requests=100_000, kv_cache_dtype="fp8_e4m3fn")
    )
    assert [(f["quantize"], f["shards"]) for f in flash["considered"]][:2] == [("none", 1), ("none", 2)]
    assert flash["memory"]["per_gpu"]["budget_bytes"] == tgi_budget_bytes(a100, 0.9, True, TGI_RUNTIME_BYTES)
    assert flash["flags"]["--kv-cache-dtype"] == "fp8_e4m3fn" and "--max-batch-total-tokens" not in flash["flags"]


@pytest.mark.parametrize("model_type", ["falcon", "RefinedWeb", "RefinedWebModel"])
def test_a_falcon_with_alibi_loads_only_16_bit_or_8_bit_bitsandbytes_weights(tmp_path: Path, model_type: str) -> None:
    """CausalLM.fallback passes transformers load_in_8bit=(quantize == "bitsandbytes") and nothing else: EETQ, FP8
    and nf4 asked for load fp16 weights (planned and launched so, said so); AWQ or GPTQ, which nothing loads there,
    is refused naming what loads. Without ALiBi the flash class makes and loads them."""
    values = {**FALCON_RW_1B, "model_type": model_type}
    config = _llm_config(tmp_path / model_type, values, True)
    spec = spec_from_config(config)
    for quantize in ("eetq", "fp8", "bitsandbytes-nf4"):
        plan = plan_llm(LlmRequest("H100", config=config, quantize=quantize))
        assert plan["memory"]["per_gpu"]["weights_bytes"] == llm_weight_bytes(spec, "none")
        assert "--quantize" not in plan["flags"] and plan["flags"]["--dtype"] == "bfloat16"
        assert f"--quantize {quantize} is ignored there and the weights load in fp16" in plan["warnings"][-1]
    assert plan_llm(LlmRequest("H100", config=config, quantize="bitsandbytes"))["flags"]["--quantize"] == "bitsandbytes"
    for quantize in ("awq", "gptq"):
        with pytest.raises(PlanError) as refused:
            plan_llm(LlmRequest("L4", config=config, quantize=quantize))
        assert str(refused.value) == (
            f"TGI serves tiiuae/falcon-rw-1b (model type {model_type!r} with alibi: true) only through transformers' "
            f"own class (CausalLM.fallback: its flash Falcon class is for rotary positions), which loads no "
            f"{quantize.upper()} weights: --quantize {quantize} cannot be planned; plan a 16-bit checkpoint with "
            "quantize auto, none or bitsandbytes (8-bit, the only quantization that path makes)"
        )
    rotary = _llm_config(tmp_path / "rotary", {**values, "alibi": False}, True)
    assert plan_llm(LlmRequest("L4", config=rotary, quantize="awq"))["flags"]["--quantize"] == "awq"
    assert plan_llm(LlmRequest("H100", config=rotary, quantize="fp8"))["flags"]["--quantize"] == "fp8"


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "gemma", "phi3", "granite"])
def test_tgis_flash_model_types_refuse_awq_and_gptq_on_a_card_without_flash_attention(
    tmp_path: Path, model_type: str
) -> None:
    """Below 8.0 get_model serves the model types it has flash classes for through CausalLM.fallback (transformers'
    AutoModelForCausalLM, load_in_8bit alone), and nothing in TGI's image loads an AWQ or GPTQ checkpoint into
    transformers: --quantize awq or gptq, and a checkpoint quantized so (whatever quantize is given), are refused on a
    T4 and a V100, saying why and what loads; auto tries 16 and 8 bits only and advises no 4-bit weights. An A10G
    (8.0+: the flash class, its own weight loader) plans both."""
    values = {**QWEN3_8B, "model_type": model_type}
    config = _llm_config(tmp_path / model_type, values, True)
    gptq = {**values, "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}}
    checkpoint = _llm_config(tmp_path / f"{model_type}-gptq", gptq, True)
    for gpu in ("T4", "V100-16GB"):
        card = CATALOG[gpu]
        major, minor = card.compute_capability
        for quantize in ("awq", "gptq"):
            with pytest.raises(PlanError) as refused:
                plan_llm(LlmRequest(gpu, config=config, count=2, quantize=quantize))
            assert str(refused.value) == (
                f"TGI serves Qwen/Qwen3-8B (model type {model_type!r}) on {card.name} (compute capability "
                f"{major}.{minor}; flash attention needs 8.0+) only through transformers' own class "
                f"(CausalLM.fallback), which loads no {quantize.upper()} weights (TGI's image has no AWQ or GPTQ "
                f"loader for transformers): --quantize {quantize} cannot be planned there; plan a 16-bit checkpoint "
                "with quantize auto, none or bitsandbytes (8-bit, the only quantization that path makes: eetq, fp8 and "
                "bitsandbytes-nf4/fp4 load as fp16 there), or an 8.0+ card (A10G, L4, A100, H100, ...)"
            )
        for quantize in ("auto", "gptq", "none"):  # not "give quantize auto or gptq": neither loads there
            with pytest.raises(PlanError, match=r"\): a checkpoint quantized with gptq cannot be planned there; plan "):
                plan_llm(LlmRequest(gpu, config=checkpoint, quantize=quantize))
        crowded = plan_llm(LlmRequest(gpu, config=config, concurrent_requests=64, max_total_tokens=4096))
        assert [f["quantize"] for f in crowded["considered"]] == ["none", "bitsandbytes"] and not crowded["fits"]
        advice = next(w for w in crowded["warnings"] if w.startswith("does not fit"))
        assert advice.endswith("; try a larger GPU, fewer concurrent requests or shorter sequences")
        assert not any("awq" in w.lower() for w in crowded["warnings"])
    assert plan_llm(LlmRequest("A10G", config=config, quantize="gptq"))["flags"]["--quantize"] == "gptq"
    assert plan_llm(LlmRequest("A10G", config=checkpoint))["flags"]["--quantize"] == "gptq"


def test_tgis_own_non_flash_class_still_reads_awq_on_a_card_without_flash_attention(tmp_path: Path) -> None:
    """OPT runs TGI's own CausalLM (its own weight loader) on every card, not CausalLM.fallback: AWQ asked for on a
    T4 is planned, with the warning that Marlin's kernels need 8.0+."""
    plan = plan_llm(LlmRequest("T4", config=_llm_config(tmp_path / "opt", OPT_6_7B, True), quantize="awq"))
    assert plan["flags"]["--quantize"] == "awq"
    assert any(w.startswith("AWQ in current TGI runs on the Marlin kernels") for w in plan["warnings"])


def test_a_falcon_below_8_0_refuses_awq_saying_why_it_takes_the_fallback(tmp_path: Path) -> None:
    """Every Falcon runs CausalLM.fallback below 8.0: a rotary one because the card lacks flash attention, one with
    ALiBi because TGI's flash Falcon class is for rotary positions; each refusal names its own reason."""
    rotary = _llm_config(tmp_path / "rotary", {**FALCON_RW_1B, "alibi": False}, True)
    with pytest.raises(PlanError, match=r"^TGI serves tiiuae/falcon-rw-1b \(model type 'falcon'\) on NVIDIA T4 \(comp"):
        plan_llm(LlmRequest("T4", config=rotary, quantize="awq"))
    with pytest.raises(PlanError, match=r"^TGI serves tiiuae/falcon-rw-1b \(model type 'falcon' with alibi: true\) "):
        plan_llm(LlmRequest("T4", config=_llm_config(tmp_path / "alibi", FALCON_RW_1B, True), quantize="awq"))
    assert plan_llm(LlmRequest("A10G", config=rotary, quantize="awq"))["flags"]["--quantize"] == "awq"


def test_a_quantizers_kernel_warning_is_given_only_where_the_quantizer_runs(tmp_path: Path) -> None:
    """Transformers' loading (CausalLM.fallback: an ALiBi Falcon anywhere, any flash model type below 8.0) ignores
    --quantize eetq and fp8, so whether the card runs their kernels is moot there: only the fp16 warning is given.
    TGI's own loader still warns of them, and so does an FP8 checkpoint on the fallback, which transformers reads."""
    alibi = _llm_config(tmp_path / "rw", FALCON_RW_1B, True)
    for gpu, quantize in (("H100", "eetq"), ("A100-80GB", "fp8")):
        warnings = plan_llm(LlmRequest(gpu, config=alibi, quantize=quantize))["warnings"]
        assert f"--quantize {quantize} is ignored there and the weights load in fp16" in warnings[-1]
        assert not any("may not run it" in w for w in warnings)
    assert not any("may not run it" in w for w in plan_llm(LlmRequest("T4", "llama-2-7b", quantize="fp8"))["warnings"])
    rotary = _llm_config(tmp_path / "rotary", {**FALCON_RW_1B, "alibi": False}, True)
    assert "EETQ's kernels cover" in plan_llm(LlmRequest("H100", config=rotary, quantize="eetq"))["warnings"][0]
    assert "FP8 weights need" in plan_llm(LlmRequest("A100-80GB", config=rotary, quantize="fp8"))["warnings"][0]
    fp8 = {**QWEN3_8B, "model_type": "llama", "quantization_config": {"quant_method": "fp8"}}
    checkpoint = plan_llm(LlmRequest("T4", config=_llm_config(tmp_path / "fp8", fp8, True)))["warnings"]
    assert any(w.startswith("FP8 weights need FP8 tensor cores") for w in checkpoint)
