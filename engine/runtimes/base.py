"""The one interface every runtime implements, in the spirit of optimum-benchmark's backends: a new runtime is a
new small file with a subclass of Runtime, registered in engine/runtimes/registry.py, never a new branch in the
code that measures.

How a caller drives a runtime (engine/bench/sweep.py does exactly this): construct it (RuntimeUnavailable when it
cannot run this model here), `load()`, `set_inputs(...)`, a first `run()` and `sync()`, its own warm-up runs, then
`timed_runs(n)`, `output()`, and always `close()`. Memory and energy are measured around the runs by the
caller (engine.jobs.measure), not by the runtime.

What a runtime needs from a model and from the measured point is stated here as two small protocols, so that
this room imports nothing from the rooms that use it.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from engine.core.errors import SetupError


class RuntimeUnavailable(SetupError):
    """This runtime cannot run here (no CUDA for CUDA graphs, no torch module for an ONNX-only model, ...)."""


class RuntimeModel(Protocol):
    """What a runtime asks of a model: a PyTorch module to build, and/or an ONNX file (exported on first use)."""

    name: str
    build_torch: Callable[[], Any] | None  # a torch.nn.Module in eval mode, fp32, on the CPU
    onnx_path: Callable[[], Path] | None

    @property
    def has_torch(self) -> bool: ...


class RuntimeOptions(Protocol):
    """The settings of one measured point that a runtime applies."""

    @property
    def runtime(self) -> str: ...  # a name in the registry

    @property
    def precision(self) -> str: ...  # fp32 | tf32 | fp16 | bf16

    @property
    def channels_last(self) -> bool: ...

    @property
    def cudnn_benchmark(self) -> bool: ...

    @property
    def compile_mode(self) -> str: ...


class Runtime(ABC):
    """Load a model, hold its inputs where it runs, run it, time it, and report what really ran.

    `device` is "cpu" or "cuda:N"; `memory_fraction` is the share of the GPU's memory the runtime may take
    (ONNX Runtime's arena cap; PyTorch's allocator is not capped here). After `load()`, `ran_on` names what
    really runs, and `fell_back` / `fallback_reason` say when that is not what was asked for.
    """

    name: ClassVar[str]  # the registry's name, e.g. "eager" or "ort-cuda"
    family: ClassVar[str]  # "torch" or "onnxruntime"

    def __init__(self, model: RuntimeModel, options: RuntimeOptions, device: str, memory_fraction: float = 0.9):
        self.model, self.options, self.device, self.memory_fraction = model, options, device, memory_fraction
        self.ran_on = device
        self.fell_back = False
        self.fallback_reason: str | None = None
        self.check()

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @abstractmethod
    def check(self) -> None:
        """Raise RuntimeUnavailable when this model, these options or this device cannot run here."""

    @abstractmethod
    def load(self) -> None:
        """Build the module or open the session (the time a caller reports as load time)."""

    @abstractmethod
    def set_inputs(self, inputs: tuple[Any, ...] | dict[str, np.ndarray]) -> None:
        """Place the inputs where the runs read them (CPU torch tensors in order, or numpy feeds by name)."""

    @abstractmethod
    def run(self) -> None:
        """One inference on the inputs; on CUDA it may return before the device has finished (see sync)."""

    def sync(self) -> None:  # noqa: B027 (an optional hook: synchronous runtimes have nothing to wait for)
        """Wait until every queued run has finished (a no-op for runtimes whose runs are synchronous)."""

    def timed_runs(self, n: int) -> list[float]:
        """Milliseconds of each of n runs."""
        return host_timed(self.run, n)

    @abstractmethod
    def output(self) -> np.ndarray:
        """The last run's output to compare, float64 on the host (see first_output)."""

    @abstractmethod
    def close(self) -> None:
        """Release the module or session, its inputs and outputs."""


def host_timed(fn: Callable[[], Any], n: int) -> list[float]:
    """Milliseconds of each of n calls, by the host's clock (for runs that return when their work is done)."""
    times = []
    for _ in range(n):
        start = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return times


def cuda_index(device: str) -> int:
    """N of "cuda:N" ("cuda" is 0); 0 for the CPU, where the value is unused."""
    return int(device.partition(":")[2] or 0) if device.startswith("cuda") else 0


def first_output(value: Any) -> np.ndarray:
    """The output to compare, as float64 on the host: the first of a list or tuple; a dict of outputs (the
    LivePortrait networks) as all its tensors flattened per sample side by side, in key order."""
    if isinstance(value, dict):
        import torch

        value = torch.cat([v.detach().float().flatten(1) for _, v in sorted(value.items())], dim=1)
    if isinstance(value, list | tuple):
        value = value[0]
    if hasattr(value, "detach"):
        return value.detach().float().cpu().numpy().astype(np.float64)
    return np.asarray(value, dtype=np.float64)


__all__ = [
    "Runtime",
    "RuntimeModel",
    "RuntimeOptions",
    "RuntimeUnavailable",
    "cuda_index",
    "first_output",
    "host_timed",
]
