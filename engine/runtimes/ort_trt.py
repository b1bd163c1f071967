"""ONNX Runtime on its TensorRT execution provider: TensorRT builds its own engine on the first run (cached on
disk), in fp16 when asked, which is why this is the one ORT runtime that offers fp16. Its fp32 and tf32 points build
the same engine: TensorRT computes fp32 layers in TF32 on GPUs that have it (its kTF32 builder flag is on by default
and ONNX Runtime's TensorRT provider has no option to clear it)."""

from __future__ import annotations

from engine.runtimes.ort_runtime import OrtRuntime


class OrtTrtRuntime(OrtRuntime):
    name = "ort-trt"
    provider = "trt"
    precisions = ("fp32", "tf32", "fp16")


__all__ = ["OrtTrtRuntime"]
