"""ONNX Runtime behind the runtime interface, shared by the CPU, CUDA and TensorRT runtimes (one small file each).

The session is an OrtSession, so a provider that fell back to the CPU is reported with the loader's reason. On a
GPU provider the runs go through IOBinding on the session's own device, inputs and outputs resident there: the
same footing as PyTorch's tensors. Runs are synchronous (each returns when its outputs are ready), so the host's
clock times them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from engine.runtimes.base import Runtime, RuntimeUnavailable, cuda_index, first_output
from engine.runtimes.ort_session import DeviceBinding, OrtOptions, OrtSession


class OrtRuntime(Runtime):
    family = "onnxruntime"
    provider: ClassVar[str]  # a key of engine.runtimes.ort_session.PROVIDERS
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "tf32")  # ORT runs the model's own precision

    session: OrtSession | None = None
    binding: DeviceBinding | None = None
    feeds: dict[str, np.ndarray]  # set by set_inputs
    last: Any = None

    def check(self) -> None:
        if self.model.onnx_path is None:
            raise RuntimeUnavailable(f"{self.model.name} has no ONNX file")
        precision = self.options.precision
        if precision == "fp16" and precision not in self.precisions:
            raise RuntimeUnavailable("ONNX Runtime runs the model's own precision; fp16 only through TensorRT")
        if precision not in self.precisions:
            raise RuntimeUnavailable(f"{precision} is not offered for ONNX Runtime here")

    def session_options(self) -> OrtOptions:
        """TF32 on the CUDA provider only for tf32 points, TensorRT's own fp16 engines for fp16 ones."""
        precision = self.options.precision
        return OrtOptions(
            provider=self.provider,
            device_id=cuda_index(self.device),
            cuda_tf32=precision == "tf32",
            trt_fp16=precision == "fp16",
            gpu_memory_fraction=self.memory_fraction,
        )

    def load(self) -> None:
        self.session = OrtSession(self.model.onnx_path(), self.session_options())  # type: ignore[misc]
        self.ran_on = self.session.ran_on
        self.fell_back, self.fallback_reason = self.session.fell_back, self.session.fallback_reason

    def set_inputs(self, inputs: tuple[Any, ...] | dict[str, np.ndarray]) -> None:
        session = self._session()
        if isinstance(inputs, dict):
            self.feeds = inputs
        else:
            self.feeds = {n: np.ascontiguousarray(t.numpy()) for n, t in zip(session.input_names, inputs, strict=True)}
        self.binding = session.bind(self.feeds) if session.on_gpu else None

    def _session(self) -> OrtSession:
        if self.session is None:
            raise RuntimeError(f"{self.name}: load() first")
        return self.session

    def run(self) -> None:
        if self.binding is None:
            self.last = self._session().run(self.feeds)
        else:
            self.binding.run()

    def output(self) -> np.ndarray:
        if self.binding is not None:
            return np.asarray(self.binding.outputs()[0], dtype=np.float64)
        return first_output(self.last)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
        self.session = self.binding = self.last = None
        self.feeds = {}


__all__ = ["OrtRuntime"]
