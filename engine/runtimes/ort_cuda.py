"""ONNX Runtime on its CUDA execution provider (tf32 lets the provider use TF32; fp32 keeps it off)."""

from __future__ import annotations

from engine.runtimes.ort_runtime import OrtRuntime


class OrtCudaRuntime(OrtRuntime):
    name = "ort-cuda"
    provider = "cuda"


__all__ = ["OrtCudaRuntime"]
