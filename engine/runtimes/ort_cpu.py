"""ONNX Runtime on its CPU execution provider."""

from __future__ import annotations

from engine.runtimes.ort_runtime import OrtRuntime


class OrtCpuRuntime(OrtRuntime):
    name = "ort-cpu"
    provider = "cpu"


__all__ = ["OrtCpuRuntime"]
