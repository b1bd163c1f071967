"""ONNX Runtime on its TensorRT execution provider: TensorRT builds its own engine on the first run (cached on
disk), in fp16 when asked, which is why this is the one ORT runtime that offers fp16."""

from __future__ import annotations

from engine.runtimes.ort_runtime import OrtRuntime


class OrtTrtRuntime(OrtRuntime):
    name = "ort-trt"
    provider = "trt"
    precisions = ("fp32", "tf32", "fp16")


__all__ = ["OrtTrtRuntime"]
