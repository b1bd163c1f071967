"""Every runtime by name: the sweep, the CLI and the GPU benchmark tab list and build runtimes from here only."""

from __future__ import annotations

from engine.core.errors import InputError
from engine.runtimes.base import Runtime, RuntimeModel, RuntimeOptions, RuntimeUnavailable
from engine.runtimes.cuda_graphs import CudaGraphsRuntime
from engine.runtimes.ort_cpu import OrtCpuRuntime
from engine.runtimes.ort_cuda import OrtCudaRuntime
from engine.runtimes.ort_trt import OrtTrtRuntime
from engine.runtimes.torch_compiled import COMPILE_MODES, CompiledRuntime
from engine.runtimes.torch_eager import EagerRuntime

REGISTRY: dict[str, type[Runtime]] = {
    cls.name: cls
    for cls in (EagerRuntime, CompiledRuntime, CudaGraphsRuntime, OrtCpuRuntime, OrtCudaRuntime, OrtTrtRuntime)
}
RUNTIMES = tuple(REGISTRY)
TORCH_RUNTIMES = tuple(name for name, cls in REGISTRY.items() if cls.family == "torch")
ORT_RUNTIMES = tuple(name for name, cls in REGISTRY.items() if cls.family == "onnxruntime")


def runtime_class(name: str) -> type[Runtime]:
    if name not in REGISTRY:
        raise InputError(f"unknown runtime {name!r}; accepted: {', '.join(RUNTIMES)}")
    return REGISTRY[name]


def make_runtime(model: RuntimeModel, options: RuntimeOptions, device: str, memory_fraction: float = 0.9) -> Runtime:
    """The runtime `options.runtime` names, for this model on `device` ("cpu" or "cuda:N"); RuntimeUnavailable
    when it cannot run here."""
    return runtime_class(options.runtime)(model, options, device, memory_fraction)


__all__ = [
    "COMPILE_MODES",
    "ORT_RUNTIMES",
    "REGISTRY",
    "RUNTIMES",
    "TORCH_RUNTIMES",
    "RuntimeUnavailable",
    "make_runtime",
    "runtime_class",
]
