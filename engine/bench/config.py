"""What the benchmark room is asked to do, one config per capability: a sweep (`avatarbench bench`, `/bench_submit`),
an LLM serving plan (`plan llm`, `/plan_llm`), a memory plan for one of our networks (`plan network`,
`/plan_network`) and a cost table (`cost`, `/cost`). Each is the one source of its CLI flags, API parameters and
checks. Light to import (no torch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.bench.catalog import CATALOG
from engine.bench.llms import LLMS, is_hub_id
from engine.bench.planner import KV_CACHE_DTYPES, QUANT_BYTES_PER_PARAM, PlanError
from engine.bench.workloads import BUILTIN
from engine.core.errors import InputError
from engine.core.json_text import parse_json
from engine.core.options import Config, number_tuple, option, subset_config, switch_tuple, word_tuple
from engine.onnx.timing import auto_help
from engine.runtimes.registry import COMPILE_MODES, RUNTIMES

if TYPE_CHECKING:
    from engine.bench.sweep import SweepConfig

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
DEVICES = ("cpu", "cuda")
PRESET_NAMES = ("wav2lip-ladder", "precision-grid", "cpu-vs-gpu", "onnx-providers")  # engine/bench/sweep.py PRESETS
MAX_BATCH = 8192
DEFAULT_BATCHES = {"cuda": (32, 128, 512), "cpu": (1, 4)}  # an empty batch list, by device
MODEL_HELP = (f"{', '.join(BUILTIN)}, onnx:<sha256> of a model stored by ONNX eval (app and API), or an .onnx/.zip "
              "path (CLI)")  # fmt: skip


class BenchError(InputError):
    """The sweep request is refused; the message says what was wrong and what is accepted."""


# What chooses a sweep's configurations besides a preset (a preset replaces them all).
CONFIGURATION_FIELDS = ("runtime", "precision", "batch", "compile", "compile_mode", "channels_last", "cudnn_benchmark",
                        "device", "points")  # fmt: skip


@dataclass
class SweepRequest(Config):
    """A sweep as people ask for it: a preset, a grid of options, or explicit points (JSON); plan() turns it into
    the list of configurations the sweep measures (engine.bench.sweep.SweepConfig)."""

    error = BenchError

    model: str = option("wav2lip", help=MODEL_HELP)
    preset: str | None = option(None, help="a preset instead of the grid (empty: the grid)", choices=PRESET_NAMES)
    runtime: tuple[str, ...] = option(
        ("eager",), help="runtimes, e.g. eager,ort-cpu (an ONNX model: ort-cpu or ort-cuda, by device)",
        choices=RUNTIMES, text=word_tuple("runtime"),
    )  # fmt: skip
    precision: tuple[str, ...] = option(
        ("fp32",), help="precisions, e.g. fp32,fp16", choices=PRECISIONS, text=word_tuple("precision")
    )
    batch: tuple[int, ...] | None = option(
        None, help="batch sizes, e.g. 128,512 (empty: 32,128,512 on the GPU, 1,4 on the CPU)", low=1, high=MAX_BATCH,
        text=number_tuple(int),
    )  # fmt: skip
    compile: tuple[bool, ...] = option((False,), help="off, on or off,on (adds torch.compile)", text=switch_tuple())
    compile_mode: str = option("default", help="torch.compile mode", choices=COMPILE_MODES)
    channels_last: tuple[bool, ...] = option((False,), help="off, on or off,on", text=switch_tuple())
    cudnn_benchmark: tuple[bool, ...] = option((True,), help="on, off or on,off", text=switch_tuple())
    device: tuple[str, ...] | None = option(
        None, help="cpu,cuda (empty: cuda when there is one, else cpu)", choices=DEVICES, text=word_tuple("device")
    )
    runs: int | None = option(None, help=f"timed runs per configuration (empty: 20; {auto_help(20)})", low=1,
                              high=10_000)  # fmt: skip
    warmup: int | None = option(None, help="untimed runs after the first (empty: 3; 1 on the CPU)", low=0, high=1000)
    points: str | None = option(
        None, help='explicit configurations as a JSON list, e.g. [{"runtime": "eager", "precision": "fp16", '
        '"batch": 512, "device": "cuda"}] (empty: the grid)',
    )  # fmt: skip

    def _set(self, given: Collection[str] | None, *but: str) -> list[str]:
        """The configuration options `given` (None: those with other values than their defaults), as flags (less
        `but`)."""
        return [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(self) if f.name in CONFIGURATION_FIELDS
                and f.name not in but and (f.name in given if given is not None
                                           else getattr(self, f.name) != f.default)]  # fmt: skip

    def problems(self, given: Collection[str] | None = None) -> list[str]:
        """`given`: the options the user typed (the CLI knows them; a form sends every field, so there an option
        counts as given when it differs from its default)."""
        chosen = self._set(given)
        if self.preset is not None and chosen:
            return [f"preset {self.preset} sets its own configurations; {', '.join(chosen)} would be ignored: "
                    "give the preset alone (with --model, --runs, --warmup) or the options without it"]  # fmt: skip
        if self.points is None:
            compiled = True in self.compile or "compile" in self.runtime
            if self.compile_mode != "default" and not compiled:
                return [f"compile mode {self.compile_mode} applies to torch.compile, which this grid does not use: "
                        "add compile on (or the compile runtime), or leave the mode out"]  # fmt: skip
            return []
        ignored = self._set(given, "points", "device")  # a point without a device takes --device's
        if self.device is not None and len(self.device) > 1:
            return [f"with --points, --device gives the device of the points that name none: one device, not "
                    f"{','.join(self.device)} (put the device in each point instead)"]  # fmt: skip
        if ignored:
            return [f"points set every configuration; {', '.join(ignored)} would be ignored: put them in the points "
                    "(runtime, precision, batch, ...), or give them without --points"]  # fmt: skip
        try:
            data = parse_json(self.points, "points")
        except InputError as exc:
            return [str(exc)]
        if not isinstance(data, list) or not all(isinstance(p, dict) for p in data):
            return ["points must be a JSON list of objects (runtime, precision, batch, device, ...)"]
        return []

    def plan(self, has_gpu: bool) -> SweepConfig:
        """The configurations to measure on this machine (with notes on what was dropped or scaled down)."""
        from engine.bench.sweep import SweepConfig, grid, preset

        if self.preset:
            config = preset(self.preset, self.model, has_gpu, self.runs, self.warmup)
        elif self.points is not None:
            points = parse_json(self.points, "points")
            device = self.device[0] if self.device else "cuda" if has_gpu else "cpu"  # for points that name none
            points = [{"device": device, **p} for p in points]  # problems() made sure they are objects
            if self.model not in BUILTIN:  # an ONNX model: a point naming no runtime runs on ONNX Runtime, as a grid
                points = [{"runtime": "ort-cpu" if p["device"] == "cpu" else "ort-cuda", **p} for p in points]
            config = SweepConfig.from_dict({"model": self.model, "points": points, "runs": self.runs,
                                            "warmup": self.warmup})  # fmt: skip
        else:
            runtimes = list(self.runtime)
            if True in self.compile and "compile" not in runtimes:
                runtimes.append("compile")
            if False not in self.compile:
                runtimes = [r for r in runtimes if r != "eager"] or ["compile"]
            devices = list(self.device or (("cuda",) if has_gpu else ("cpu",)))
            onnx_default = self.model not in BUILTIN and runtimes == ["eager"]  # an ONNX model: its runtime
            points, dropped = [], set()
            for device in devices:  # grid() puts the device outermost too: the same order as one grid
                batches = list(self.batch or DEFAULT_BATCHES[device])  # empty: each device its own list
                here = [{"cpu": "ort-cpu", "cuda": "ort-cuda"}[device]] if onnx_default else runtimes
                more, why = grid(here, list(self.precision), batches, [device], list(self.channels_last),
                                 list(self.cudnn_benchmark), self.compile_mode)  # fmt: skip
                points, dropped = points + more, dropped | set(why)
            notes = sorted(dropped)
            if not points:
                raise BenchError("this grid has no configuration that can run: " + "; ".join(notes))
            config = SweepConfig(self.model, points, self.runs, self.warmup, notes=notes)
        config.validate()
        return config


@dataclass
class LlmRequest(Config):
    """Serving an LLM with Text Generation Inference on `count` GPUs: does it fit, and with which flags."""

    error = PlanError

    gpu: str = option(help=f"the card: {', '.join(CATALOG)}")
    llm: str | None = option(
        None, help=f"a preset ({', '.join(LLMS)}) or a Hub model id, OWNER/NAME, whose config.json comes from the "
        "Hub's local cache, or from the Hub when online (or give config)",
    )  # fmt: skip
    config: Path | None = option(
        None, help="instead, any model's Hugging Face config.json (on the command line, or the folder holding it: "
        "with .safetensors files there, their headers give the exact parameter count)", file=True,
    )  # fmt: skip
    count: int = option(1, help="GPUs available (tensor-parallel shards)", low=1, high=64)
    max_input_tokens: int | None = option(None, help="longest prompt (empty: max total tokens - 1)", low=1,
                                          high=1_048_576)  # fmt: skip
    max_total_tokens: int | None = option(
        None,
        help="prompt plus generated tokens per request (empty: the model's context, at most 4096; the launch line "
        "always states it)",
        low=2,
        high=1_048_576,
    )
    concurrent_requests: int = option(1, help="requests at max total tokens held at once", low=1, high=100_000)
    quantize: str = option("auto", help="weight quantisation", choices=("auto", *QUANT_BYTES_PER_PARAM))
    memory_fraction: float = option(0.9, help="share of each GPU's memory TGI may use", low=0.05, high=1.0)
    kv_cache_dtype: str = option(
        "auto", help="the KV cache's type: auto (the model's 16-bit type) or one of TGI's 8-bit floats, half the bytes "
        "per token (its flash path only)", choices=KV_CACHE_DTYPES,
    )  # fmt: skip

    def problems(self) -> list[str]:
        if self.llm is None and self.config is None:
            return [f"no model: give llm (one of {', '.join(LLMS)}) or config (a model's config.json)"]
        if self.llm is not None and self.config is not None:
            return [f"two models, llm {self.llm} and config {self.config.name}: give one"]
        if self.llm is not None and self.llm not in LLMS and not is_hub_id(self.llm):
            return [f"llm {self.llm!r} is neither a preset ({', '.join(LLMS)}) nor a Hub model id (OWNER/NAME, such "
                    "as mistralai/Mistral-7B-v0.1)"]  # fmt: skip
        return []


MAX_PLANNED_GPUS = 100_000


@dataclass
class NetworkPlanConfig(Config):
    """Batch size and GPU count for one of our networks on a card."""

    error = PlanError

    gpu: str = option(help=f"the card: {', '.join(CATALOG)}")
    model: str = option("wav2lip", help="one of our networks", choices=tuple(BUILTIN))
    precision: str = option("fp16", help="precision of weights and activations", choices=PRECISIONS)
    memory_fraction: float = option(0.9, help="share of the GPU's memory to plan for", low=0.05, high=1.0)
    calibrate: Path | None = option(
        None, help="a GPU sweep's report (bench --json) whose peaks calibrate the activations", file=True
    )
    target_throughput: float | None = option(None, help="samples/s wanted in total", low=0.001, high=1e12)
    throughput_per_gpu: float | None = option(None, help="measured samples/s on one card", low=0.001, high=1e12)

    def problems(self) -> list[str]:
        if (self.target_throughput is None) != (self.throughput_per_gpu is None):
            return ["target throughput and throughput per GPU go together: the GPU count is one over the other"]
        if self.target_throughput and self.throughput_per_gpu:
            gpus = self.target_throughput / self.throughput_per_gpu
            if gpus > MAX_PLANNED_GPUS:  # 1e12 over 0.001 planned 10^15 cards
                return [
                    f"{self.target_throughput:g} samples/s at {self.throughput_per_gpu:g} per GPU needs {gpus:,.0f} "
                    f"GPUs, more than {MAX_PLANNED_GPUS:,} (the largest clusters): check both figures"
                ]
        return []


@dataclass
class CostConfig(Config):
    """Cost per 1000 requests on every priced card, from a throughput measured on one."""

    error = PlanError

    throughput: float = option(help="measured samples per second", low=1e-6, high=1e12)
    measured_on: str = option(help="where it was measured: cpu or a card", choices=("cpu", *CATALOG))
    precision: str = option("fp16", help="precision it was measured at", choices=PRECISIONS)
    samples_per_request: float = option(1.0, help="e.g. 250 frames per 10 s video", low=1e-6, high=1e9)
    cpu_price_per_hour: float | None = option(
        None, help="dollars per hour of the CPU machine it was measured on (with --measured-on cpu): prices the "
        "measurement itself beside the cards", low=0.001, high=1e4,
    )  # fmt: skip

    def problems(self) -> list[str]:
        if self.cpu_price_per_hour is not None and self.measured_on != "cpu":
            return ["cpu price per hour prices a throughput measured on the CPU (measured on cpu); a card's price "
                    "goes in the price file"]  # fmt: skip
        return []


RequestSize = subset_config(
    CostConfig, "RequestSize", ("samples_per_request",),
    "The samples a request is, checked as `cost` checks it: the tab prices a configuration measured on a card"
    " (perhaps one the catalog lacks, which CostConfig cannot name) with this alone.",
)  # fmt: skip


__all__ = [
    "DEVICES",
    "PRECISIONS",
    "PRESET_NAMES",
    "BenchError",
    "CostConfig",
    "LlmRequest",
    "NetworkPlanConfig",
    "RequestSize",
    "SweepRequest",
]
