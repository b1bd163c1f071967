"""The GPUs people rent for talking-head and LLM inference: memory, bandwidth, peak rates, features, prices.

Peak rates are NVIDIA's published dense figures (no structured sparsity) in TFLOP/s (TOPS for int8);
fp16/bf16 are tensor-core rates with fp32 accumulation, which is what PyTorch and ONNX Runtime use
(GeForce cards run at half their fp16-accumulate marketing figure). Cards before Ampere (compute
capability < 8.0) have no tf32 or bf16 tensor cores: those entries are None, and a benchmark at those
precisions there runs at the fp32 rate. Prices are indicative on-demand hourly rates, each with its
source and date; they change often, so they are editable (a JSON file in the data directory
overrides them) and every cost figure says which price it used.

One card name can hide several boards: an H100 is an SXM module (HBM3, 700 W), a PCIe card (HBM2e, 350 W)
or an NVL card (94 GB), each with its own clocks, memory and bandwidth, so each is its own entry. A detected
card is matched by the name NVML gives it (`nvml_names`, whole and exact, e.g. "NVIDIA H100 80GB HBM3" is the
SXM module), then by a distinctive part of it (`aliases`); a variant neither knows stays unmatched, with no
peak rates, rather than borrowing another board's.

Memory is planned against the total CUDA reports (torch.cuda.get_device_properties().total_memory, which is also
torch.cuda.mem_get_info's total), not the size on the box: that is what a memory fraction in torch or TGI is a share
of. It is larger than the box's GB on most cards (an "80GB" H100 has 85.0e9 bytes) and smaller than nvidia-smi's
total, which counts the memory the driver keeps for itself (recent drivers show it as used on an idle card). Each
entry records both totals and where they were read; a card whose CUDA total was not found is given nvidia-smi's less
DRIVER_RESERVE_MIB. A detected card carries its own total.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

from engine.core.errors import InputError
from engine.core.files import written_whole
from engine.core.json_text import parse_json

PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8")
MIB = 2**20
# The gap between nvidia-smi's total and CUDA's in the pairs below runs from 224 MiB (V100 16GB) to 762 MiB (A100 80GB
# SXM, driver 555); a card with only nvidia-smi's total is given this much less, so its plans err towards "no room".
DRIVER_RESERVE_MIB = 768
PRICE_SOURCE = "indicative on-demand rate, single GPU, public price lists as of 2026-11 (edit to your provider's)"


@dataclass(frozen=True)
class Gpu:
    key: str
    name: str
    memory_gb: float  # device memory as sold (GB = 1e9 bytes), for naming it; plans use memory_bytes
    bandwidth_gbs: float  # memory bandwidth, GB/s
    peak_tflops: dict[str, float | None]  # PRECISIONS -> dense peak; None where the card has no such unit
    compute_capability: tuple[int, int]
    nvenc: bool
    price_per_hour: float | None = None
    price_source: str = PRICE_SOURCE
    aliases: tuple[str, ...] = ()  # whole tokens of NVML names that identify the card
    notes: str = ""
    detected: bool = False
    nvml_names: tuple[str, ...] = ()  # what NVML calls exactly this board ("NVIDIA H200" and not "NVIDIA H200 NVL")
    spec_source: str = ""  # where memory, bandwidth and peak rates come from
    nvml_total_mib: int | None = None  # the total nvidia-smi shows, MiB (with the driver's reserve)
    cuda_total_bytes: int | None = None  # the total CUDA reports (torch's total_memory); None: not found for this board
    memory_source: str = ""  # where the two totals were read

    @property
    def memory_bytes(self) -> int:
        """The card's total as CUDA reports it: what torch's and TGI's memory fractions are shares of. Without it,
        nvidia-smi's total less the largest driver reserve seen; a bare entry knows only the box's GB."""
        if self.cuda_total_bytes:
            return self.cuda_total_bytes
        if self.nvml_total_mib:
            return (self.nvml_total_mib - DRIVER_RESERVE_MIB) * MIB
        return int(self.memory_gb * 1e9)

    def peak(self, precision: str) -> float:
        """The rate a run at this precision can reach: tf32/bf16 fall back to fp32 on pre-Ampere cards."""
        value = self.peak_tflops.get(precision)
        if value is None and precision in ("tf32", "bf16"):
            return float(self.peak_tflops["fp32"])  # type: ignore[arg-type]
        if value is None:
            raise KeyError(f"{self.name} has no {precision} rate")
        return float(value)

    def supports(self, feature: str) -> bool:
        """bf16, tf32, flash attention and paged attention, Marlin kernels: all need compute capability 8.0+."""
        if feature in ("bf16", "tf32", "flash-attention", "paged-attention", "marlin"):
            return self.compute_capability >= (8, 0)
        if feature == "fp16-tensor-cores":
            return self.compute_capability >= (7, 0)
        if feature == "eetq":  # EETQ's int8 kernels are built for compute capability 7.0 to 8.9
            return (7, 0) <= self.compute_capability <= (8, 9)
        if feature == "fp8":  # FP8 tensor cores: Ada (8.9) and Hopper (9.0) on
            return self.compute_capability >= (8, 9)
        if feature == "int8-matmul":  # bitsandbytes' LLM.int8() kernels (its diagnostics: "slow 8-bit matmul" below)
            return self.compute_capability >= (7, 5)
        raise KeyError(feature)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["compute_capability"] = f"{self.compute_capability[0]}.{self.compute_capability[1]}"
        out["memory_bytes"] = self.memory_bytes  # the total plans use, whichever way it was found
        return out


def _rates(fp32: float, tf32: float | None, fp16: float, bf16: float | None, int8: float) -> dict[str, float | None]:
    return {"fp32": fp32, "tf32": tf32, "fp16": fp16, "bf16": bf16, "int8": int8}


# NVIDIA's datasheets list tensor-core rates with 2:4 sparsity; the catalog keeps the dense half of each.
H100_DATASHEET = (
    "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM / H100 PCIe / H100 NVL columns (tensor rates listed with "
    "sparsity, halved here)"
)
H200_DATASHEET = (
    "NVIDIA H200 Tensor Core GPU datasheet, H200 SXM / H200 NVL columns (tensor rates listed with sparsity, "
    "halved here)"
)
V100_DATASHEET = "NVIDIA V100 Tensor Core GPU datasheet, SXM2 / PCIe columns"
A100_DATASHEET = (
    "NVIDIA A100 Tensor Core GPU datasheet, A100 80GB PCIe / SXM columns (tensor rates listed with sparsity, halved "
    "here)"
)
A100_40GB_DATASHEET = (
    "NVIDIA A100 Tensor Core GPU datasheet (2020), A100 40GB PCIe / SXM columns (tensor rates listed with sparsity, "
    "halved here)"
)
T4_DATASHEET = "NVIDIA T4 datasheet (FP16/FP32 mixed-precision tensor rate)"
A40_DATASHEET = "NVIDIA A40 datasheet (tensor rates listed with sparsity, halved here)"
L4_DATASHEET = "NVIDIA L4 datasheet (tensor rates listed with sparsity, halved here)"
L40S_DATASHEET = "NVIDIA L40S datasheet (dense column)"
GA102_WHITEPAPER = (
    "NVIDIA Ampere GA102 GPU architecture whitepaper, RTX 3090 column (FP16/BF16 tensor rates with FP32 accumulate, "
    "half the FP16-accumulate figure; dense)"
)
AD102_WHITEPAPER = (
    "NVIDIA Ada GPU architecture whitepaper, RTX 4090 column (FP16/BF16 tensor rates with FP32 accumulate, half the "
    "FP16-accumulate figure; dense)"
)
RTX_4090D_SOURCE = f"{AD102_WHITEPAPER}, scaled by the 4090 D's 14592 of 16384 CUDA cores at the same 2.52 GHz boost"
HOPPER_SXM_RATES = _rates(67, 494.5, 989.5, 989.5, 1979)  # the SXM modules: H100 SXM and H200 SXM alike
HOPPER_NVL_RATES = _rates(60, 417.5, 835.5, 835.5, 1670.5)  # the NVL cards: H100 NVL and H200 NVL alike
NO_PRICE = "no indicative price recorded for this board: set yours (the price table or prices.json)"

PAIRED = (
    "nvidia-smi and deviceQuery on one machine, driver {driver}: github.com/thamada/nvidia-smi gls/{stem}_smi.py, "
    "gls/{stem}_deviceQuery.py"
)
MODAL = "nvidia-smi: the total listed in github.com/modal-labs/modal-client/pull/2797"
NOT_FOUND = f"no CUDA total found: nvidia-smi's less {DRIVER_RESERVE_MIB} MiB"
V100_16GB = (
    "nvidia-smi: 16384 MiB (a V100-PCIE-16GB on the CUDA 11.8 driver, public output; the board's 16 GiB of HBM2); "
    "CUDA: total_memory=16160MB in torch's device properties of V100-SXM2-16GB and V100-PCIE-16GB (YOLOv5's setup line "
    "in public notebooks, R4xx drivers)"
)
V100_32GB = (
    "nvidia-smi: 32768 MiB (V100-SXM2-32GB, public outputs); CUDA: deviceQuery's 32510 MBytes (34089730048 bytes) on "
    "the CUDA 11.4 driver and torch's total_memory=32510MB on a V100-PCIE-32GB (public outputs)"
)
# Per board: nvidia-smi's total in MiB, CUDA's total in bytes (None: not found, nvidia-smi's less DRIVER_RESERVE_MIB
# is used), and where each was read. CUDA's total varies by a few MiB with the driver (a T4: 15079 to 15109 MiB).
MEMORY_TOTALS: dict[str, tuple[int, int | None, str]] = {
    "T4": (15360, 15095 * MIB, f"{MODAL}; CUDA: deviceQuery's 15095 MBytes on Colab (CUDA 12.4 driver), "
           "github.com/sylvia-ymlin/cuda-kernels-from-scratch README.md"),
    "V100-16GB": (16384, 16160 * MIB, V100_16GB),
    "V100-PCIe-16GB": (16384, 16160 * MIB, V100_16GB),
    "V100-32GB": (32768, 34_089_730_048, V100_32GB),
    "V100-PCIe-32GB": (32768, 34_089_730_048, V100_32GB),
    "V100S": (32768, None, f"nvidia-smi: 32768 MiB assumed (its 32 GiB of HBM2, as the V100 32GB boards); {NOT_FOUND}"),
    "A10G": (23028, 22587 * MIB, f"{MODAL} (Modal's A10G; also public A10G outputs); CUDA: total_memory=22587MB in "
             "torch's device properties of an A10G (a public output; its address not kept)"),
    "A40": (46068, 47_608_692_736, PAIRED.format(driver="550.127.05", stem="A40x10")),
    "L4": (23034, 23_570_219_008, PAIRED.format(driver="550.90.07", stem="L4")),
    "L40S": (46068, 47_803_596_800, PAIRED.format(driver="550.127.05", stem="L40S")),
    "A100-40GB": (40960, 40536 * MIB, f"{MODAL}; CUDA: total_memory=40536MB, an A100-SXM4-40GB in PaddlePaddle's "
                  "get_device_properties example, github.com/PaddlePaddle/Paddle "
                  "python/paddle/device/cuda/__init__.py"),
    "A100-80GB": (81920, 85_100_068_864, PAIRED.format(driver="555.42.02", stem="A100SXMx4")),
    "A100-80GB-PCIe": (81920, None, f"nvidia-smi: 81920 MiB (public outputs of the A100 80GB PCIe); {NOT_FOUND}"),
    "RTX-3090": (24576, 25_327_697_920, PAIRED.format(driver="560.35.03", stem="RTX3090")),
    "RTX-4090": (24564, 25_386_352_640, PAIRED.format(driver="550.127.05", stem="RTX4090")),
    "RTX-4090D-48GB": (49140, None, "nvidia-smi: 49140 MiB on 48 GB 4090 D boards (driver 595.71.05), "
                       f"github.com/tinygrad/open-gpu-kernel-modules/issues/36; {NOT_FOUND}"),
    "H100": (81559, 85_045_477_376, PAIRED.format(driver="565.57.01", stem="H100SXMx8") + "; nvidia-smi's 81559 "
             "MiB also in this repository's benchmarks/results/telemetry-table-nvidia-h100-80gb-hbm3-2026-11-22.txt"),
    "H100-PCIe": (81559, None, f"nvidia-smi: 81559 MiB (public outputs of the H100 PCIe); {NOT_FOUND}"),
    "H100-NVL": (95830, 99_861_594_112, PAIRED.format(driver="550.54.14", stem="H100NVLx2")),
    "H200": (143771, 150_109_880_320, "this repository's benchmarks/results, driver 580.159.04: nvidia-smi in "
             "telemetry-table-nvidia-h200-2026-12-04.txt, CUDA (torch's total_memory) in "
             "bench-wav2lip-generator-nvidia-h200-2026-12-04.json"),
    "H200-NVL": (143771, None, f"nvidia-smi: 143771 MiB (public outputs of the H200 NVL); {NOT_FOUND}"),
}  # fmt: skip


def _with_totals(gpu: Gpu) -> Gpu:
    nvml, cuda, source = MEMORY_TOTALS[gpu.key]
    return replace(gpu, nvml_total_mib=nvml, cuda_total_bytes=cuda, memory_source=source)


CATALOG: dict[str, Gpu] = {
    g.key: _with_totals(g)
    for g in (
        Gpu(
            "T4", "NVIDIA T4", 16, 320, _rates(8.1, None, 65, None, 130), (7, 5), True, 0.35, aliases=("T4",),
            spec_source=T4_DATASHEET,
        ),
        Gpu(
            "V100-16GB", "NVIDIA V100 16GB (SXM2)", 16, 900, _rates(15.7, None, 125, None, 62), (7, 0), True, 2.48,
            aliases=("V100-SXM2-16GB", "V100 16GB"), spec_source=V100_DATASHEET,
            notes="the SXM2 module (300 W); int8 through DP4A (no int8 tensor cores)",
        ),
        Gpu(
            "V100-32GB", "NVIDIA V100 32GB (SXM2)", 32, 900, _rates(15.7, None, 125, None, 62), (7, 0), True, 2.75,
            aliases=("V100-SXM2-32GB",), spec_source=V100_DATASHEET, notes="the SXM2 module (300 W)",
        ),
        Gpu(
            "V100-PCIe-16GB", "NVIDIA V100 PCIe 16GB", 16, 900, _rates(14, None, 112, None, 56), (7, 0), True, None,
            NO_PRICE, aliases=("V100-PCIE-16GB",), spec_source=V100_DATASHEET,
            notes="the PCIe card (250 W, lower clocks than the SXM2 module); int8 through DP4A",
        ),
        Gpu(
            "V100-PCIe-32GB", "NVIDIA V100 PCIe 32GB", 32, 900, _rates(14, None, 112, None, 56), (7, 0), True, None,
            NO_PRICE, aliases=("V100-PCIE-32GB",), spec_source=V100_DATASHEET,
            notes="the PCIe card (250 W, lower clocks than the SXM2 module); int8 through DP4A",
        ),
        Gpu(
            "V100S", "NVIDIA V100S PCIe 32GB", 32, 1134, _rates(16.4, None, 130, None, 65.6), (7, 0), True, None,
            NO_PRICE, aliases=("V100S-PCIE-32GB", "V100S"), spec_source="NVIDIA V100S datasheet",
            notes="the faster PCIe card (250 W, 1134 GB/s); int8 through DP4A",
        ),
        Gpu(
            "A10G", "NVIDIA A10G", 24, 600, _rates(35, 35, 70, 70, 140), (8, 6), True, 1.01, aliases=("A10G",),
            spec_source="no NVIDIA datasheet: AWS's figures, and Baseten's A10 vs A10G comparison (the A10G's CUDA "
            "cores outrun the A10's 31.2 TFLOP/s: 80 SMs at 1.71 GHz make 35)",
            notes="AWS's A10 variant (g5 instances); tensor rates as AWS reports them",
        ),
        Gpu(
            "A40", "NVIDIA A40", 48, 696, _rates(37.4, 74.8, 149.7, 149.7, 299.3), (8, 6), True, 0.44, aliases=("A40",),
            spec_source=A40_DATASHEET,
        ),
        Gpu(
            "L4", "NVIDIA L4", 24, 300, _rates(30.3, 60, 121, 121, 242), (8, 9), True, 0.80, aliases=("L4",),
            spec_source=L4_DATASHEET,
        ),
        Gpu(
            "L40S", "NVIDIA L40S", 48, 864, _rates(91.6, 183, 362, 362, 733), (8, 9), True, 1.86, aliases=("L40S",),
            spec_source=L40S_DATASHEET,
        ),
        Gpu(
            "A100-40GB", "NVIDIA A100 40GB", 40, 1555, _rates(19.5, 156, 312, 312, 624), (8, 0), False, 1.29,
            aliases=("A100-SXM4-40GB", "A100-PCIE-40GB", "A100 40GB"), spec_source=A100_40GB_DATASHEET,
            notes="no NVENC (decoders only)",
        ),
        Gpu(
            "A100-80GB", "NVIDIA A100 80GB", 80, 2039, _rates(19.5, 156, 312, 312, 624), (8, 0), False, 1.79,
            aliases=("A100-SXM4-80GB", "A100-80GB"), spec_source=A100_DATASHEET,
            notes="the SXM module (HBM2e, 2039 GB/s); no NVENC (decoders only)",
        ),
        Gpu(
            "A100-80GB-PCIe", "NVIDIA A100 80GB PCIe", 80, 1935, _rates(19.5, 156, 312, 312, 624), (8, 0), False,
            None, NO_PRICE, aliases=("A100 80GB PCIe",), nvml_names=("NVIDIA A100 80GB PCIe",),
            spec_source=A100_DATASHEET, notes="the PCIe card (HBM2e, 1935 GB/s); no NVENC (decoders only)",
        ),
        Gpu(
            "RTX-3090", "NVIDIA GeForce RTX 3090", 24, 936, _rates(35.6, 35.6, 71, 71, 284), (8, 6), True, 0.22,
            aliases=("RTX 3090",), spec_source=GA102_WHITEPAPER,
        ),
        Gpu(
            "RTX-4090", "NVIDIA GeForce RTX 4090", 24, 1008, _rates(82.6, 82.6, 165.2, 165.2, 660.6), (8, 9), True,
            0.34, aliases=("RTX 4090",), spec_source=AD102_WHITEPAPER,
        ),
        Gpu(
            "RTX-4090D-48GB", "NVIDIA GeForce RTX 4090 D 48GB", 48, 1008, _rates(73.5, 73.5, 147, 147, 588), (8, 9),
            True, 0.50, aliases=("RTX 4090 D",), spec_source=RTX_4090D_SOURCE,
            notes="memory-modified 4090 D boards; rates scaled by its core count",
        ),
        Gpu(
            "H100", "NVIDIA H100 SXM 80GB", 80, 3350, HOPPER_SXM_RATES, (9, 0), False, 2.49,
            aliases=("H100 SXM",), nvml_names=("NVIDIA H100 80GB HBM3",), spec_source=H100_DATASHEET,
            notes="the SXM module (HBM3, up to 700 W); no NVENC (decoders only)",
        ),
        Gpu(
            "H100-PCIe", "NVIDIA H100 PCIe 80GB", 80, 2000, _rates(51, 378, 756.5, 756.5, 1513), (9, 0), False,
            None, NO_PRICE, aliases=("H100 PCIe",), nvml_names=("NVIDIA H100 PCIe",), spec_source=H100_DATASHEET,
            notes="the PCIe card (HBM2e, up to 350 W); no NVENC (decoders only)",
        ),
        Gpu(
            "H100-NVL", "NVIDIA H100 NVL 94GB", 94, 3900, HOPPER_NVL_RATES, (9, 0), False, None, NO_PRICE,
            aliases=("H100 NVL",), nvml_names=("NVIDIA H100 NVL",), spec_source=H100_DATASHEET,
            notes="the PCIe card sold in NVLink-bridged pairs (HBM3, up to 400 W); figures per card; no NVENC",
        ),
        Gpu(
            "H200", "NVIDIA H200 SXM 141GB", 141, 4800, HOPPER_SXM_RATES, (9, 0), False, 3.50,
            aliases=("H200 SXM",), nvml_names=("NVIDIA H200",), spec_source=H200_DATASHEET,
            notes="the SXM module (HBM3e, up to 700 W); no NVENC (decoders only)",
        ),
        Gpu(
            "H200-NVL", "NVIDIA H200 NVL 141GB", 141, 4800, HOPPER_NVL_RATES, (9, 0), False, None, NO_PRICE,
            aliases=("H200 NVL",), nvml_names=("NVIDIA H200 NVL",), spec_source=H200_DATASHEET,
            notes="the PCIe card (HBM3e, up to 600 W); no NVENC (decoders only)",
        ),
    )
}  # fmt: skip


# Words that make another board of a known name: faster or slower silicon, or a slice of the card.
VARIANT_WORDS = ("ti", "super", "laptop", "mobile", "max-q", "mig")


def _mentions(name: str, alias: str) -> bool:
    """Whether the alias appears as a whole token ("L4" is not in "L40S", "A40" is not in "RTX A4000") of a name with
    no variant word the alias lacks ("RTX 3090" is not the RTX 3090 Ti, "RTX 4090" not the 4090 Laptop GPU, "A100"
    not a MIG slice of one)."""
    alias = alias.lower()
    if re.search(rf"(?<![a-z0-9]){re.escape(alias)}(?![a-z0-9])", name) is None:
        return False
    words, own = set(re.split(r"[\s_]+", name)), set(re.split(r"[\s_]+", alias))
    return not any(word in words and word not in own for word in VARIANT_WORDS)


def _plain(name: str) -> str:
    """A card name compared without case, repeated spaces or the vendor's prefix ("H100 PCIe" is "NVIDIA H100 PCIe")."""
    words = name.lower().split()
    return " ".join(words[1:] if words[:1] == ["nvidia"] else words)


def catalog_entry(key: str) -> Gpu | None:
    """A catalog entry by its key, in any letter case ("a100-80gb" as "A100-80GB")."""
    return next((gpu for k, gpu in CATALOG.items() if k.lower() == key.strip().lower()), None)


def find_gpu(name: str) -> Gpu | None:
    """A catalog entry by key (case-insensitive), by the exact name NVML gives the board ('NVIDIA H100 80GB HBM3'),
    or by an alias within an NVML name such as 'NVIDIA A100-SXM4-80GB' (the longest one that matches)."""
    wanted = name.strip().lower()
    for gpu in CATALOG.values():
        if gpu.key.lower() == wanted or _plain(name) in map(_plain, gpu.nvml_names):
            return gpu
    # the longest matching alias wins: "A100-SXM4-80GB" must not match a shorter, vaguer one
    scored = [(len(alias), gpu) for gpu in CATALOG.values() for alias in gpu.aliases if _mentions(wanted, alias)]
    return max(scored, key=lambda t: t[0])[1] if scored else None


def detected_gpu(name: str, memory_bytes: int, compute_capability: tuple[int, int]) -> Gpu:
    """The card this machine has: its catalog entry with the real memory, or a bare entry if unknown."""
    known = find_gpu(name)
    own = {"cuda_total_bytes": memory_bytes, "nvml_total_mib": None, "memory_source": "this machine's CUDA total"}
    if known is not None:
        return replace(known, memory_gb=memory_bytes / 1e9, detected=True, name=name, **own)
    return Gpu(
        key="detected",
        name=name,
        memory_gb=memory_bytes / 1e9,
        bandwidth_gbs=0.0,
        peak_tflops=dict.fromkeys(PRECISIONS),
        compute_capability=compute_capability,
        nvenc=False,
        price_per_hour=None,
        notes="not in the catalog: peak rates unknown, so no % of peak",
        detected=True,
        **own,
    )


def report_gpu(report: dict[str, Any]) -> Gpu | None:
    """The GPU a sweep report was measured on: its catalog entry, or a bare entry (key "detected", no rates) for a
    card the catalog does not know; None where the report names none."""
    gpu = (report.get("machine") or {}).get("gpu") or {}
    name = gpu.get("name") if isinstance(gpu, dict) else None
    if not isinstance(name, str) or not name.strip():
        return None
    known = find_gpu(name)
    memory = gpu.get("memory_bytes")
    if not isinstance(memory, int) or memory <= 0:
        return known or detected_gpu(name, 0, (0, 0))
    major, _, minor = str(gpu.get("compute_capability") or "0.0").partition(".")
    capability = (int(major), int(minor)) if major.isdigit() and minor.isdigit() else (0, 0)
    return detected_gpu(name, memory, capability)


@dataclass
class PriceBook:
    """Hourly prices by catalog key, with where each came from; saved as JSON beside the data."""

    prices: dict[str, float] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    @classmethod
    def defaults(cls) -> PriceBook:
        return cls(
            {k: g.price_per_hour for k, g in CATALOG.items() if g.price_per_hour is not None},
            {k: g.price_source for k, g in CATALOG.items()},
        )

    @classmethod
    def load(cls, *paths: str | os.PathLike) -> PriceBook:
        """Defaults, overridden by each file's entries in turn (the shared file, then one person's); a missing file
        changes nothing."""
        book = cls.defaults()
        for p in map(Path, paths):
            if not p.is_file():
                continue
            try:
                data = parse_json(p.read_bytes(), f"price file {p.name}")
            except OSError as exc:
                raise InputError(f"price file {p.name} cannot be read: {exc.strerror or exc}") from None
            prices = data.get("prices", {}) if isinstance(data, dict) else None
            sources = data.get("sources", {}) if isinstance(data, dict) else None
            if not isinstance(prices, dict) or not isinstance(sources, dict):
                raise InputError(
                    f'price file {p.name} must be a JSON object {{"prices": {{GPU: dollars per hour}}, '
                    '"sources": {GPU: text}}'
                )
            if extra := sorted(set(data) - {"prices", "sources"}):  # a "currency" would be read as dollars silently
                raise InputError(
                    f'price file {p.name} has {", ".join(map(repr, extra))}: it holds only "prices" (US dollars per '
                    'hour by GPU) and "sources"'
                )
            book.update(prices, sources)
        return book

    def update(self, prices: dict[str, Any], sources: dict[str, str] | None = None) -> None:
        for key, value in prices.items():
            if key not in CATALOG:
                raise InputError(f"no GPU {key!r} in the catalog; known: {', '.join(CATALOG)}")
            if value is None:
                self.prices.pop(key, None)
                continue
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0.001 <= value < 1000:
                raise InputError(f"price for {key} must be dollars per hour in [0.001, 1000), got {value!r:.40}")
            source = (sources or {}).get(key)
            if source is not None and not isinstance(source, str):
                raise InputError(f"the source of {key}'s price must be text (where it came from), got {source!r:.40}")
            self.prices[key] = float(value)
            self.sources[key] = source or f"edited by the user on {date.today().isoformat()}"

    def changes_from(self, base: PriceBook) -> dict[str, dict[str, Any]]:
        """A price file's content: what this book sets otherwise than `base`, a price it removed as None (which
        load() removes again). A visitor's own file keeps only these, so the operator's later prices still reach
        every card the visitor left alone."""
        changed = [key for key in CATALOG if (self.prices.get(key), self.sources.get(key)) !=
                   (base.prices.get(key), base.sources.get(key))]  # fmt: skip
        return {
            "prices": {key: self.prices.get(key) for key in changed},
            "sources": {key: self.sources[key] for key in changed if key in self.sources},
        }

    def save(self, path: str | os.PathLike, base: PriceBook | None = None) -> None:
        """The whole book; with `base` (the prices this file goes over when loaded), only what differs from it."""
        data = {"prices": self.prices, "sources": self.sources} if base is None else self.changes_from(base)
        with written_whole(Path(path)) as tmp:
            tmp.write_text(json.dumps(data, indent=2) + "\n")


__all__ = [
    "CATALOG",
    "DRIVER_RESERVE_MIB",
    "MEMORY_TOTALS",
    "PRECISIONS",
    "Gpu",
    "PriceBook",
    "catalog_entry",
    "detected_gpu",
    "find_gpu",
]
