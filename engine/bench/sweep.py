"""Benchmark sweeps: a model x runtime x precision x batch x memory format x cudnn.benchmark grid (or a preset),
each point measured the same way, with speed-up against a baseline, memory, achieved TFLOP/s against the
card's peak, numerical error against fp32, energy, and the telemetry recorded while it ran.

How a point is measured: build (load_s), first run on the batch (first_run_s: torch.compile and TensorRT
engine builds happen here), `warmup` untimed runs, then `runs` timed runs (CUDA events on the GPU) inside a
measurement window (engine/jobs/measure.py): its allocator peak, the device's used memory sampled during the runs,
the process's RSS peak, energy and telemetry are the point's figures (steady state, not building or compiling).
Two exceptions, each said in the row: on a GPU, where the timed runs last under ENERGY_WINDOW_S, energy comes from
a second window of as many runs as fill it (energy_window_s); and where CUDA graphs are captured (cudagraphs, and
torch.compile's reduce-overhead and max-autotune), the allocator peak includes the capture, since replays allocate
nothing and their working memory, the graphs' private pool, is taken at capture. Throughput is the network's alone:
inputs are already on the device, and copies to and from it, decoding, detection and encoding are not timed.
The inputs of a batch are 8 seeded samples repeated, so the output's first 8 samples can be checked against
one fp32 reference per device, however large the batch. An out-of-memory point is recorded as "oom" and
the sweep goes on (a CPU point whose estimated memory is more than the job has free is recorded so without running:
the out-of-memory killer, or the broker's job memory cap, would end the whole sweep); a point whose ONNX Runtime
session fell back to the CPU is flagged. Weights are random (seeded): speed does not depend on trained values, and
every report says so. Empty runs/warmup are the defaults on the GPU and a quick budget on the CPU
(engine/onnx/timing.py; each row records its counts, the notes say so); a latency too scattered to trust carries
a spread warning.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from itertools import product
from typing import Any

import numpy as np

from engine.bench.config import DEVICES, MAX_BATCH, PRECISIONS, BenchError
from engine.bench.workloads import BUILTIN, BenchModel, count_flops, memory_profile
from engine.core.device import usable_host_memory
from engine.core.errors import one_line
from engine.jobs.measure import measured
from engine.onnx.examples import EXAMPLES
from engine.onnx.latency import few_runs_note, latency_stats
from engine.onnx.timing import auto_runs_note, spread_warning, timed_count, warmup_count
from engine.runtimes.ort_session import PROVIDERS
from engine.runtimes.registry import COMPILE_MODES, ORT_RUNTIMES, RUNTIMES, TORCH_RUNTIMES, make_runtime

REFERENCE_SAMPLES = 8
MAX_POINTS = 200
CPU_BATCH_DIVISOR = 64  # GPU presets on a machine without one: the same ladder at 1/64 of the batch
DEFAULT_RUNS, DEFAULT_WARMUP = 20, 3  # what empty runs and warmup mean on the GPU
RANDOM_WEIGHTS_NOTE = "random-initialised weights (seeded): speed and memory do not depend on trained values"
NETWORK_ONLY_NOTE = (
    "throughput is the network's alone, at full use: inputs already on the device; copies to and from it, decoding, "
    "detection and encoding are not timed, so a whole request costs more than its cost per 1000 requests here"
)
OWN_WEIGHTS_NOTE = "the model's own weights, fed seeded synthetic inputs"
# How the figures are counted, in the report itself: compared with another tool's, a figure off by a convention
# (1 or 2 FLOPs a multiply-add, sparse or dense peak, a percentile's definition) reads as a factor wrong.
COUNTING_NOTE = (
    "how the figures are counted: FLOPs 2 per multiply-add, of convolutions, matrix products and attention only "
    "(torch's flop counter on one sample, or an ONNX model's estimate, whose uncounted ops onnx inspect lists): "
    "elementwise ops, biases, normalisation, pooling and resampling are left out; % of peak is of NVIDIA's dense rate "
    "(without 2:4 sparsity) at the row's math_precision, fp16 and bf16 with fp32 accumulation; latency percentiles "
    "interpolate linearly between the sorted runs (numpy's default); speed-up is samples/s over the baseline's"
)
PARTIAL_NOTE = "the sweep stopped before its end"
# A GPU point's energy comes from a window at least this long: NVML's energy counter moves about every 100 ms (and
# an H100's power reading is a 1 s average), so the timed runs' window alone (35 ms at batch 32) measured noise.
ENERGY_WINDOW_S = 2.0
LONG_RUNS_S = 60.0  # a point's timed runs expected to take longer than this are announced with their estimate

Progress = Callable[[float, str], Any]


@dataclass(frozen=True)
class BenchPoint:
    runtime: str = "eager"
    precision: str = "fp32"
    batch: int = 1
    device: str = "cuda"  # cpu | cuda (the sweep's GPU)
    channels_last: bool = False
    cudnn_benchmark: bool = True
    compile_mode: str = "default"

    @property
    def label(self) -> str:
        parts = [self.device, self.runtime, self.precision, f"b{self.batch}"]
        if self.channels_last:
            parts.append("cl")
        if self.runtime == "compile" and self.compile_mode != "default":
            parts.append(self.compile_mode)
        if self.device == "cuda" and self.runtime in TORCH_RUNTIMES and not self.cudnn_benchmark:
            parts.append("no-cudnn-bench")
        return " ".join(parts)

    def problems(self) -> list[str]:
        out = []
        if self.runtime not in RUNTIMES:
            out.append(f"runtime {self.runtime!r} is not one of {', '.join(RUNTIMES)}")
        if self.precision not in PRECISIONS:
            out.append(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.device not in DEVICES:
            out.append(f"device {self.device!r} is not cpu or cuda")
        if not isinstance(self.batch, int) or isinstance(self.batch, bool) or not 1 <= self.batch <= MAX_BATCH:
            out.append(f"batch {self.batch!r} is not a whole number in 1..{MAX_BATCH}")
        if self.compile_mode not in COMPILE_MODES:
            out.append(f"compile mode {self.compile_mode!r} is not one of {', '.join(COMPILE_MODES)}")
        for name in ("channels_last", "cudnn_benchmark"):
            if not isinstance(getattr(self, name), bool):
                out.append(f"{name} {getattr(self, name)!r:.40} is not true or false")
        if not out and (reason := self.meaningless()) is not None:
            out.append(f"{self.label}: {reason}")
        return out

    def meaningless(self) -> str | None:
        """Why this combination would measure nothing (a runtime or precision its device does not have), or None;
        the grid drops such points with this as its note, an explicit one is refused with it."""
        if self.runtime in ORT_RUNTIMES:
            if (self.runtime == "ort-cpu") != (self.device == "cpu"):
                return f"{self.runtime} runs on {'the CPU' if self.runtime == 'ort-cpu' else 'the GPU'} only"
            if self.precision == "bf16" or (self.precision == "fp16" and self.runtime != "ort-trt"):
                return "ONNX Runtime runs the model's own precision (fp32; tf32 on CUDA; fp16 via TensorRT)"
        # options a runtime or device does not have: the label would not say them, and the point measured without
        if self.compile_mode != "default" and self.runtime != "compile":
            return "a compile mode applies to the compile runtime only"
        if self.runtime in ORT_RUNTIMES and (self.channels_last or not self.cudnn_benchmark):
            return "channels_last and cudnn_benchmark are PyTorch's options, not ONNX Runtime's"
        if self.device == "cpu" and not self.cudnn_benchmark:
            return "cudnn_benchmark is cuDNN's, on the GPU"
        if self.device == "cpu" and self.runtime == "cudagraphs":
            return "CUDA graphs need the GPU"
        if self.device == "cpu" and self.precision in ("tf32", "fp16"):
            return "tf32 and fp16 are GPU precisions (the CPU runs fp32 and bf16)"
        return None


@dataclass
class SweepConfig:
    model: str  # a built-in name (wav2lip, s3fd) or onnx:<sha256> of a model stored by ONNX eval
    points: list[BenchPoint]
    runs: int | None = None  # None: DEFAULT_RUNS on the GPU, a quick budget on the CPU (engine/onnx/timing.py)
    warmup: int | None = None
    baseline: int = 0  # index into points: its throughput is speed-up 1.0
    preset: str | None = None
    notes: list[str] = field(default_factory=list)

    def validate(self) -> None:
        problems = []
        if not self.points:
            problems.append("no configurations to run")
        if len(self.points) > MAX_POINTS:
            problems.append(f"{len(self.points)} configurations; at most {MAX_POINTS} per sweep")
        for i, point in enumerate(self.points):
            problems += [f"configuration {i + 1}: {p}" for p in point.problems()]
        if not problems and self.model not in BUILTIN:  # an ONNX model: it ran, "done", with every row an error
            why = "an ONNX model runs on ONNX Runtime (ort-cpu, ort-cuda, ort-trt); PyTorch's need one of our networks"
            problems += [f"configuration {i + 1}: {point.label}: {why}" for i, point in enumerate(self.points)
                         if point.runtime in TORCH_RUNTIMES]  # fmt: skip
        if not problems and self.model in BUILTIN and self.model not in EXAMPLES:  # built, then every row failed
            why = f"{self.model} has no ONNX export: ONNX Runtime runs {' and '.join(EXAMPLES)}, or an ONNX model"
            problems += [f"configuration {i + 1}: {point.label}: {why}" for i, point in enumerate(self.points)
                         if point.runtime in ORT_RUNTIMES]  # fmt: skip
        if not problems:  # the label names everything a point measures: one label twice is one measurement twice
            first: dict[str, int] = {}
            for i, point in enumerate(self.points):
                if (j := first.setdefault(point.label, i)) != i:
                    problems.append(f"configurations {j + 1} and {i + 1} are the same ({point.label})")
        for name, value, lo, hi in (("runs", self.runs, 1, 10_000), ("warmup", self.warmup, 0, 1000)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi):
                problems.append(f"{name} must be a whole number in {lo}..{hi} (or empty: automatic), got {value!r}")
        if not isinstance(self.baseline, int) or not 0 <= self.baseline < max(1, len(self.points)):
            problems.append(f"baseline must index a configuration (0..{len(self.points) - 1})")
        if problems:  # the first few: 5000 bad points made one message of half a megabyte
            more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise BenchError("invalid sweep: " + "; ".join(problems[:5]) + more)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise BenchError(
                f"unknown sweep field(s) {', '.join(unknown)}; known: {', '.join(cls.__dataclass_fields__)}"
            )
        if not isinstance(known.get("points", []), list):
            raise BenchError("points must be a list of objects with runtime, precision, batch, device, ...")
        if not isinstance(known.get("model"), str | None):
            raise BenchError(f"model must be text, got {known['model']!r:.40}")
        points = []
        for p in known.get("points", []):
            if not isinstance(p, dict):
                raise BenchError("each point must be an object with runtime, precision, batch, device, ...")
            extra = sorted(set(p) - set(BenchPoint.__dataclass_fields__))
            if extra:  # `channels-last` as the flag is spelt, say
                fields = ", ".join(BenchPoint.__dataclass_fields__)
                raise BenchError(f"unknown point field(s) {', '.join(extra)}; a point takes {fields}")
            points.append(BenchPoint(**p))
        known["points"] = points
        if "model" not in known:
            raise BenchError("a sweep needs a model")
        return cls(**known)


# ---------------------------------------------------------------------------------------------- grids and presets


def grid(
    runtimes: list[str],
    precisions: list[str],
    batches: list[int],
    devices: list[str],
    channels_last: list[bool] = (False,),  # type: ignore[assignment]
    cudnn_benchmark: list[bool] = (True,),  # type: ignore[assignment]
    compile_mode: str = "default",
) -> tuple[list[BenchPoint], list[str]]:
    """Every combination that means something, and a note for each kind that was dropped."""
    points, dropped = [], set()
    for device, runtime, precision, batch, cl, cb in product(
        devices, runtimes, precisions, batches, channels_last, cudnn_benchmark
    ):
        if runtime in ORT_RUNTIMES:
            cl, cb = False, True  # not ORT options: one point, not duplicates
        if device == "cpu":
            cb = True  # cuDNN's: the CPU has no such choice
        point = BenchPoint(
            runtime, precision, int(batch), device, cl, cb, compile_mode if runtime == "compile" else "default"
        )
        if (reason := point.meaningless()) is not None:
            dropped.add(reason)
            continue
        points.append(point)
    unique = list(dict.fromkeys(points))
    return unique, sorted(f"skipped: {d}" for d in dropped)


WAV2LIP_LADDER = [
    BenchPoint("eager", "fp32", 128, "cuda"),
    BenchPoint("eager", "fp32", 512, "cuda"),
    BenchPoint("eager", "fp16", 512, "cuda", channels_last=True),
    BenchPoint("compile", "fp16", 512, "cuda", channels_last=True),
    BenchPoint("compile", "fp16", 1024, "cuda", channels_last=True),
]
CPU_VS_GPU = [
    BenchPoint("eager", "fp32", 32, "cpu"),
    BenchPoint("ort-cpu", "fp32", 32, "cpu"),
    BenchPoint("eager", "fp32", 32, "cuda"),
    BenchPoint("eager", "fp16", 32, "cuda", channels_last=True),
    BenchPoint("ort-cuda", "fp32", 32, "cuda"),
]
ONNX_PROVIDERS = [
    BenchPoint("ort-cpu", "fp32", 8, "cpu"),
    BenchPoint("ort-cuda", "fp32", 8, "cuda"),
    BenchPoint("ort-cuda", "tf32", 8, "cuda"),
    BenchPoint("ort-trt", "fp32", 8, "cuda"),
    BenchPoint("ort-trt", "fp16", 8, "cuda"),
]
PRESETS: dict[str, tuple[str, list[BenchPoint]]] = {
    "wav2lip-ladder": (
        "batch 128 fp32 eager (the baseline), 512, 512 fp16, 512 fp16 compiled, 1024 fp16 compiled",
        WAV2LIP_LADDER,
    ),
    "precision-grid": (
        "fp32, tf32, fp16, bf16 x batch 32, 128, 512 (eager, channels_last)",
        grid(["eager"], list(PRECISIONS), [32, 128, 512], ["cuda"], [True])[0],
    ),
    "cpu-vs-gpu": ("one batch on the CPU (PyTorch, ORT) and the GPU (PyTorch fp32/fp16, ORT CUDA)", CPU_VS_GPU),
    "onnx-providers": ("ONNX Runtime CPU, CUDA (fp32, tf32), TensorRT (fp32, fp16), batch 8", ONNX_PROVIDERS),
}


def preset(name: str, model: str, has_gpu: bool, runs: int | None = None, warmup: int | None = None) -> SweepConfig:
    """A preset as a sweep for this machine. Without a GPU: a preset that compares with the CPU keeps its CPU
    side; the others run their GPU points on the CPU at 1/64 of the batch (tf32/fp16 become fp32, GPU-only
    runtimes are dropped). The notes say which happened."""
    if name not in PRESETS:
        raise BenchError(f"no preset {name!r}; presets: {', '.join(PRESETS)}")
    points = list(PRESETS[name][1])
    notes = [f"preset {name}: {PRESETS[name][0]}"]
    if model in BUILTIN and model not in EXAMPLES and any(p.runtime in ORT_RUNTIMES for p in points):
        points = [p for p in points if p.runtime not in ORT_RUNTIMES]
        if not points:
            raise BenchError(f"preset {name} runs ONNX Runtime only, and {model} has no ONNX export: ONNX Runtime "
                             f"runs {' and '.join(EXAMPLES)}, or an ONNX model")  # fmt: skip
        notes.append(f"{model} has no ONNX export: the preset's ONNX Runtime configurations were left out")
    if not has_gpu and any(p.device == "cpu" for p in points):  # a comparison with the CPU: keep its side
        points = [p for p in points if p.device == "cpu"]
        notes.append("no GPU here: only the CPU configurations ran")
    elif not has_gpu:
        cpu_points = []
        for p in points:
            if p.runtime in ("cudagraphs", "ort-cuda", "ort-trt"):
                continue
            batch = max(1, p.batch // CPU_BATCH_DIVISOR) if p.device == "cuda" else p.batch
            precision = "fp32" if p.precision in ("tf32", "fp16") else p.precision
            cpu_points.append(replace(p, device="cpu", batch=batch, precision=precision, cudnn_benchmark=True))
        points = list(dict.fromkeys(cpu_points))
        notes.append(
            f"no GPU here: the GPU points ran on the CPU at 1/{CPU_BATCH_DIVISOR} of their batch, fp16/tf32 as "
            "fp32, CUDA-only runtimes dropped"
        )
    return SweepConfig(model, points, runs, warmup, 0, name, notes)


# ---------------------------------------------------------------------------------------------- measuring


def _repeat_to(inputs: tuple[Any, ...] | dict[str, np.ndarray], batch: int) -> Any:
    """The 8 reference samples repeated (and cut) to the batch: torch tensors, or numpy feeds by name."""
    if isinstance(inputs, dict):
        return {k: np.ascontiguousarray(np.take(a, np.arange(batch) % a.shape[0], axis=0)) for k, a in inputs.items()}
    out = []
    for t in inputs:
        reps = math.ceil(batch / t.shape[0])
        out.append(t.repeat(reps, *([1] * (t.dim() - 1)))[:batch].contiguous())
    return tuple(out)


def _error(out: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Against the fp32 reference of the same samples (a batch below 8 compares its own samples)."""
    if out.ndim == 0 or ref.ndim == 0:
        return {"error": "the output is one number for the whole batch (no batch dimension): no per-sample check"}
    if not np.all(np.isfinite(ref)):
        return {"error": "the fp32 reference itself holds NaN or inf: no comparison", "nan_or_inf":
                int((~np.isfinite(out)).sum())}  # fmt: skip
    n = min(out.shape[0], ref.shape[0])
    out, ref = out[:n], ref[:n]
    if out.shape != ref.shape:
        return {"error": f"shape {list(out.shape)} against the reference {list(ref.shape)}"}
    finite = bool(np.all(np.isfinite(out)))
    diff = np.abs(out - ref)
    return {
        "max_abs": float(diff.max()) if finite else math.inf,
        "rel_l2": _relative_l2(out, ref) if finite else math.inf,
        "nan_or_inf": int((~np.isfinite(out)).sum()),
    }


def _relative_l2(out: np.ndarray, ref: np.ndarray) -> float:
    """|out - ref| / |ref|, as parity's: 0.0 where both are zero, inf where only the reference is (an all-zero
    reference against a nonzero output read 0.0, a perfect match)."""
    norm, gap = float(np.linalg.norm(ref)), float(np.linalg.norm(out - ref))
    if norm == 0:
        return 0.0 if gap == 0 else math.inf
    return gap / norm


@dataclass
class _Context:
    model: BenchModel
    config: SweepConfig
    gpu_device: str | None  # "cuda:N" or None
    gpu: Any  # gpu_catalog.Gpu for the card, or None
    memory_fraction: float
    flops: float | None
    references: dict[str, np.ndarray] = field(default_factory=dict)
    base_inputs: Any = ()  # the 8 reference samples: torch tensors, or numpy feeds for ONNX-only models
    job_memory_gb: float = math.inf  # the job's host memory cap (AVATARBENCH_JOB_MEMORY_GB)
    profile: tuple[int, int] | None = None  # memory_profile in fp32, once a CPU point needs it


def _reference(ctx: _Context, device: str) -> np.ndarray:
    """fp32 eager output of the 8 reference samples on this device (TF32 off); ONNX-only models: ORT on CPU."""
    if device in ctx.references:
        return ctx.references[device]
    point = BenchPoint("eager" if ctx.model.has_torch else "ort-cpu", "fp32", REFERENCE_SAMPLES, device)
    if not ctx.model.has_torch:
        point = replace(point, device="cpu")
    runtime = make_runtime(ctx.model, point, ctx.gpu_device if point.device == "cuda" else "cpu", ctx.memory_fraction)
    try:
        runtime.load()
        runtime.set_inputs(ctx.base_inputs)
        runtime.run()
        runtime.sync()
        ctx.references[device] = runtime.output()
    finally:
        runtime.close()
    return ctx.references[device]


def _measure(ctx: _Context, point: BenchPoint, row: dict[str, Any], say: Callable[[str], Any]) -> None:
    """`say(words)` adds to the point's progress label: how long its timed runs should take, when it is long."""
    device = ctx.gpu_device if point.device == "cuda" else "cpu"
    runtime = make_runtime(ctx.model, point, device, ctx.memory_fraction)  # type: ignore[arg-type]
    resident = 0  # tensors other work in this process keeps (e.g. cached portrait networks) are not this point's
    if device.startswith("cuda"):
        import torch

        resident = torch.cuda.memory_allocated(device)
    captured = device.startswith("cuda") and (
        point.runtime == "cudagraphs" or (point.runtime == "compile" and point.compile_mode != "default")
    )
    try:
        with measured(device) if captured else contextlib.nullcontext() as setup:  # type: ignore[arg-type]
            per_run_s, warmup = _set_up(runtime, ctx, point, row)
        runs = timed_count(ctx.config.runs, point.device == "cpu", DEFAULT_RUNS, per_run_s)
        row["warmup"], row["runs"] = warmup, runs
        if runs * per_run_s >= LONG_RUNS_S:  # --runs 10000 on a CPU: hours, with nothing said
            say(f"{runs} timed runs, about {_minutes(runs * per_run_s)}")
        with measured(device) as window:  # type: ignore[arg-type]
            times, wall_s = _timed_stream(runtime, runs)
        figures = window.figures()
        if setup is not None:  # the graphs' pool was taken at capture: the replays' window never sees it
            peaks = (figures["peak_allocated_bytes"], setup.figures()["peak_allocated_bytes"])
            figures["peak_allocated_bytes"] = max((p for p in peaks if p is not None), default=None)
        _record_window(row, figures, point, runs * point.batch, resident)
        if device.startswith("cuda") and figures["wall_s"] < ENERGY_WINDOW_S:
            _energy_window(runtime, row, figures["wall_s"] / runs, point.batch, device)
        row["latency"] = latency_stats(times, point.batch)
        row["spread_warning"] = spread_warning(row["latency"])
        if row["spread_warning"]:
            row["warnings"].append(row["spread_warning"])
        row["timed_wall_s"] = wall_s
        row["samples_per_s"] = runs * point.batch / wall_s if wall_s > 0 else row["latency"]["throughput_per_s"]
        output = runtime.output()
        output = output[:REFERENCE_SAMPLES] if output.ndim else output
    finally:
        runtime.close()
    row["error_vs_fp32"] = _error(output, _reference(ctx, point.device))


def _timed_stream(runtime: Any, runs: int) -> tuple[list[float], float]:
    """Each run's milliseconds (the latency figures), and the seconds the runs took together by the host's clock up
    to the last one's end: what throughput is computed from, alike for every runtime. PyTorch's per-run CUDA events
    leave out the host's time between runs, which ONNX Runtime's host-timed runs include, and at small batches that
    made PyTorch look faster than it streams."""
    start = time.perf_counter()
    times = runtime.timed_runs(runs)
    runtime.sync()
    return times, time.perf_counter() - start


def _set_up(runtime: Any, ctx: _Context, point: BenchPoint, row: dict[str, Any]) -> tuple[float, int]:
    """Build, first run (compilation, engine builds, graph capture) and warm-up, timed apart from the point's runs;
    (seconds per warm-up run, warm-up runs)."""
    start = time.perf_counter()
    runtime.load()
    runtime.set_inputs(_repeat_to(ctx.base_inputs, point.batch))
    row["load_s"] = time.perf_counter() - start
    row["ran_on"], row["fell_back"] = runtime.ran_on, runtime.fell_back
    row["math_precision"] = arithmetic_precision(row, _own_precision(ctx.model))
    if runtime.fell_back:
        row["warnings"].append(f"fell back to {runtime.ran_on}: {runtime.fallback_reason}")
    start = time.perf_counter()
    runtime.run()
    runtime.sync()
    row["first_run_s"] = time.perf_counter() - start
    warmup = warmup_count(ctx.config.warmup, point.device == "cpu", DEFAULT_WARMUP)
    start = time.perf_counter()
    for _ in range(warmup):
        runtime.run()
    runtime.sync()
    return ((time.perf_counter() - start) / warmup if warmup else row["first_run_s"]), warmup


def _energy_window(runtime: Any, row: dict[str, Any], per_run_s: float, batch: int, device: str) -> None:
    """The point's energy from as many more runs as fill ENERGY_WINDOW_S (its timed runs were too short for NVML's
    counter); none where that window has no energy figure either."""
    runs = max(1, math.ceil(ENERGY_WINDOW_S / max(per_run_s, 1e-6)))
    with measured(device) as window:
        runtime.timed_runs(runs)
    figures = window.figures()
    row["energy_window_s"] = figures["wall_s"]
    row["energy_j_per_sample"] = None if figures["energy_j"] is None else figures["energy_j"] / (runs * batch)
    row["energy_source"] = figures["energy_source"]


def _say(tell: Progress, fraction: float, step: str, words: str) -> None:
    tell(fraction, f"{step}: {words}")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _over_host_memory(ctx: _Context, point: BenchPoint) -> str | None:
    """Why a CPU point is not run, or None: its weights and every layer's output for the batch (an upper bound,
    in fp32: a real run frees most of them early; Wav2Lip batch 256 took 6.2 GB against 8.8 estimated) are more
    than the job has free. Only PyTorch models have a profile; batch 1 is always run."""
    if point.device != "cpu" or point.batch <= 1 or not ctx.model.has_torch:
        return None
    free = usable_host_memory(ctx.job_memory_gb)
    if ctx.profile is None:
        ctx.profile = memory_profile(ctx.model, "fp32")
    weights, per_sample = ctx.profile
    need = weights + point.batch * per_sample
    if need <= free:
        return None
    return (
        f"not run: batch {point.batch} may need up to {need / 2**30:.1f} GiB of memory ({per_sample / 2**20:.0f} MiB "
        f"a sample for every layer's output, an upper bound, and {weights / 2**20:.0f} MiB of weights) and "
        f"{free / 2**30:.1f} GiB is free for this job: the out-of-memory killer would end the whole sweep"
    )


def _record_window(
    row: dict[str, Any], figures: dict[str, Any], point: BenchPoint, samples: int, resident: int
) -> None:
    """The timed runs' window as the row's memory, energy and telemetry. ONNX Runtime allocates outside PyTorch, so
    its points have no allocator peak (the device's used memory stands in); telemetry rows keep the report's shape,
    [t, GPU util %, device used bytes, power W, host CPU %], plus the process's RSS."""
    allocated = figures["peak_allocated_bytes"]
    if point.runtime in TORCH_RUNTIMES and allocated is not None:
        row["peak_allocated_bytes"] = allocated - resident
    row["device_used_bytes"] = figures["peak_device_used_bytes"]
    row["host_rss_bytes"] = figures["peak_rss_bytes"]
    row["telemetry"] = figures["telemetry"]
    if figures["energy_j"] is not None:
        row["energy_j_per_sample"] = figures["energy_j"] / samples
        row["energy_source"] = figures["energy_source"]
        row["energy_window_s"] = figures["wall_s"]


def _empty_row(point: BenchPoint) -> dict[str, Any]:
    return {
        **asdict(point),
        "label": point.label,
        "status": "ok",
        "error": None,
        "ran_on": None,
        "fell_back": False,
        "load_s": None,
        "first_run_s": None,
        "warmup": None,
        "runs": None,
        "latency": None,
        "spread_warning": None,
        "samples_per_s": None,
        "timed_wall_s": None,
        "speedup": None,
        "peak_allocated_bytes": None,
        "device_used_bytes": None,
        "host_rss_bytes": None,
        "flops_per_sample": None,
        "achieved_tflops": None,
        "math_precision": None,
        "percent_of_peak": None,
        "error_vs_fp32": None,
        "energy_j_per_sample": None,
        "energy_source": None,
        "energy_window_s": None,
        "telemetry": [],
        "warnings": [],
    }


def _finish(rows: list[dict[str, Any]], ctx: _Context) -> None:
    base = rows[ctx.config.baseline] if ctx.config.baseline < len(rows) else None  # a stopped sweep may lack it
    base_rate = base["samples_per_s"] if base and base["status"] == "ok" else None
    for row in rows:
        rate = row["samples_per_s"]
        if not rate:
            continue
        if base_rate:
            row["speedup"] = rate / base_rate
        if ctx.flops:
            row["flops_per_sample"] = ctx.flops
            row["achieved_tflops"] = ctx.flops * rate / 1e12
            precision = math_precision(row)
            on_the_card = row["device"] == "cuda" and ctx.gpu is not None and ctx.gpu.key != "detected"
            if on_the_card and precision is not None:
                row["percent_of_peak"] = 100.0 * row["achieved_tflops"] / ctx.gpu.peak(precision)


def math_precision(row: dict[str, Any]) -> str | None:
    """The precision a row's arithmetic ran at, whose peak its share is of: as measuring recorded it
    (arithmetic_precision); a report from before it was recorded read by the rule it was measured with then."""
    if "math_precision" in row:
        return row["math_precision"]
    return "tf32" if row["runtime"] == "ort-trt" and row["precision"] == "fp32" else row["precision"]


def arithmetic_precision(row: dict[str, Any], own: str | None) -> str | None:
    """The precision a loaded row's arithmetic runs at, given the model's own weights' (fp16/bf16, else None).

    TensorRT computes fp32 layers as TF32 (runtimes/ort_trt.py), several times the fp32 rate on Ampere and later.
    A session that runs on ONNX Runtime's CUDA provider, TensorRT's too where its libraries are missing, runs the
    model's own precision, TF32 only where asked: a fallen-back fp16 TensorRT row was held against the fp16 peak,
    15x the fp32 one on an H100. A GPU row that fell back to the CPU has no share of the card's peak (None)."""
    ran_on = row["ran_on"]
    if row["device"] == "cuda" and ran_on == PROVIDERS["cpu"]:
        return None
    if row["runtime"] in ORT_RUNTIMES and ran_on == PROVIDERS["cuda"]:
        return own or ("tf32" if row["precision"] == "tf32" else "fp32")
    if row["runtime"] == "ort-trt" and row["precision"] == "fp32":
        return "tf32"
    return row["precision"]


def machine(gpu_device: str | None) -> dict[str, Any]:
    """What a result must carry to be compared across machines."""
    import onnxruntime as ort
    import torch

    info: dict[str, Any] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "onnxruntime": ort.__version__,
        "gpu": None,
    }
    if gpu_device:
        props = torch.cuda.get_device_properties(gpu_device)
        info["gpu"] = {
            "name": props.name,
            "memory_bytes": int(props.total_memory),
            "compute_capability": f"{props.major}.{props.minor}",
        }
        from engine.system.telemetry import NvmlSource

        source = NvmlSource()
        info["driver"] = getattr(source, "driver_version", None)
    return info


def run_sweep(
    config: SweepConfig,
    model: BenchModel,
    gpu_device: str | None,
    progress: Progress | None = None,
    memory_fraction: float = 0.9,
    partial: Callable[[dict[str, Any]], Any] | None = None,
    job_memory_gb: float = math.inf,
) -> dict[str, Any]:
    """Measure every point; the report (JSON-ready). Points asking for the GPU on a machine without one are
    recorded as errors, not silently run on the CPU. Each point's measurement window samples for itself.
    `partial(report)` gets the report of the points measured so far after each one (but the last), so that a sweep
    stopped on the way (cancelled, out of time, interrupted) keeps what it measured. `job_memory_gb` caps the host
    memory a CPU point may be estimated to take (_over_host_memory)."""
    config.validate()
    tell = progress or (lambda f, label: None)
    gpu = None
    if gpu_device:
        import torch

        from engine.bench.catalog import detected_gpu

        props = torch.cuda.get_device_properties(gpu_device)
        gpu = detected_gpu(props.name, int(props.total_memory), (props.major, props.minor))
    tell(0.0, "counting FLOPs")
    flops = count_flops(model)
    make_inputs = model.torch_inputs if model.has_torch else model.numpy_inputs
    base = make_inputs(REFERENCE_SAMPLES)  # type: ignore[misc]
    ctx = _Context(
        model, config, gpu_device, gpu, memory_fraction, flops, base_inputs=base, job_memory_gb=job_memory_gb
    )
    rows, own, host = [], _own_precision(model), machine(gpu_device)
    for i, point in enumerate(config.points):
        step = f"{i + 1}/{len(config.points)}: {point.label}"
        tell(i / len(config.points), step)
        row = _empty_row(replace(point, precision=own) if own and point.precision == "fp32" else point)
        if row["label"] != point.label and any(p.label == row["label"] for p in config.points):
            row["label"] += " (asked fp32)"  # beside the fp16 point: one label for two rows hid one in the tables
        if point.device == "cuda" and not gpu_device:
            row["status"], row["error"] = "error", "no CUDA device on this machine"
        elif words := _over_host_memory(ctx, point):
            row["status"], row["error"] = "oom", words
        else:
            try:
                _measure(ctx, point, row, functools.partial(_say, tell, i / len(config.points), step))
            except Exception as exc:
                from engine.core.device import is_out_of_memory

                row["status"] = "oom" if is_out_of_memory(exc) else "error"
                row["error"] = f"{type(exc).__name__}: {one_line(exc)[:800]}"
            finally:
                gc.collect()  # the failed point's tensors die with its traceback; then the cache can go
                if gpu_device:
                    from engine.core.device import release_cached_memory

                    release_cached_memory()
        rows.append(row)
        if partial is not None and len(rows) < len(config.points):
            partial(_report(ctx, [dict(r) for r in rows], host, own))
    tell(1.0, "done")
    return _report(ctx, rows, host, own)


def _report(ctx: _Context, rows: list[dict[str, Any]], host: dict[str, Any], own: str | None) -> dict[str, Any]:
    """The report of the measured rows (speed-ups and TFLOP/s filled in); one with fewer rows than the sweep has
    points says in its notes where it stopped."""
    config, model = ctx.config, ctx.model
    _finish(rows, ctx)
    chosen = [(r["label"], r["warmup"], r["runs"]) for r in rows if r["device"] == "cpu" and r["runs"] is not None]
    auto = bool(chosen) and (config.runs is None or config.warmup is None)
    stopped = len(rows) < len(config.points)
    return {
        "model": {"name": model.name, "title": model.title, "flops_per_sample": ctx.flops},
        "config": config.to_dict(),
        "machine": host,
        "gpu": ctx.gpu.to_dict() if ctx.gpu else None,
        "results": rows,
        "notes": [
            *([f"{PARTIAL_NOTE}: {len(rows)} of {len(config.points)} configurations measured"] if stopped else []),
            *config.notes,
            *model.notes,
            *([few] if (few := few_runs_note(rows)) else []),
            COUNTING_NOTE,
            NETWORK_ONLY_NOTE,
            *([auto_runs_note(chosen, DEFAULT_RUNS, config.runs is None, config.warmup is None)] if auto else []),
            RANDOM_WEIGHTS_NOTE if model.has_torch else OWN_WEIGHTS_NOTE,
            *(
                [f"the model's weights are {own}: ONNX Runtime runs them as they are, so its rows say {own}"]
                if own
                else []
            ),
        ],
    }


def _own_precision(model: BenchModel) -> str | None:
    """fp16 or bf16 for an ONNX-only model whose weights are in it: what its fp32 points really run (ONNX Runtime
    runs a model's own types), so their rows and their share of the card's peak say so."""
    own = None if model.has_torch else model.weights_precision
    return own if own in ("fp16", "bf16") else None


def rows_to_csv(report: dict[str, Any]) -> str:
    """One line per configuration, the numbers a spreadsheet wants."""
    import csv
    import io

    columns = [
        "label", "device", "runtime", "precision", "batch", "channels_last", "cudnn_benchmark", "compile_mode",
        "status", "ran_on", "fell_back", "load_s", "first_run_s", "warmup", "runs", "mean_ms", "std_ms", "p50_ms",
        "p95_ms", "samples_per_s", "speedup", "peak_allocated_bytes", "device_used_bytes", "host_rss_bytes",
        "achieved_tflops", "math_precision", "percent_of_peak", "max_abs_error", "rel_l2_error", "energy_j_per_sample",
        "energy_source", "spread_warning", "error",
    ]  # fmt: skip
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for r in report["results"]:
        lat, err = r.get("latency") or {}, r.get("error_vs_fp32") or {}
        values = {**r, **{k: lat.get(k) for k in ("mean_ms", "std_ms", "p50_ms", "p95_ms")}}
        values["max_abs_error"], values["rel_l2_error"] = err.get("max_abs"), err.get("rel_l2")
        writer.writerow([values.get(c) for c in columns])
    return out.getvalue()


__all__ = [
    "COUNTING_NOTE",
    "NETWORK_ONLY_NOTE",
    "OWN_WEIGHTS_NOTE",
    "PRECISIONS",
    "PRESETS",
    "RANDOM_WEIGHTS_NOTE",
    "BenchError",
    "BenchPoint",
    "SweepConfig",
    "grid",
    "preset",
    "rows_to_csv",
    "run_sweep",
]
