"""PyTorch eager: the module as written, at the point's precision and memory format, with cuDNN autotuning and TF32
set explicitly. The compiled and CUDA-graph runtimes are this one with one step changed.

Timing on CUDA: each run is bracketed by CUDA events, read after one synchronize at the end (no host sync
between runs, so launch overlap is real); on the CPU by the host's clock.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.runtimes.base import Runtime, RuntimeUnavailable, first_output


class EagerRuntime(Runtime):
    name = "eager"
    family = "torch"

    module: Any = None
    fn: Any = None  # what run() calls with the inputs: the module, or its compiled form
    inputs: tuple[Any, ...] = ()
    last: Any = None
    dtype: Any = None

    def check(self) -> None:
        if not self.model.has_torch:
            raise RuntimeUnavailable(f"{self.model.name} is an ONNX model: PyTorch runtimes need one of our networks")

    def load(self) -> None:
        import torch

        from engine.core.device import apply_backend_flags

        precision = self.options.precision
        apply_backend_flags(cudnn_benchmark=self.options.cudnn_benchmark, tf32=precision == "tf32")
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
        module = self.model.build_torch().to(self.device, self.dtype)  # type: ignore[misc]
        if self.options.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = self.fn = module

    def set_inputs(self, inputs: tuple[Any, ...] | dict[str, np.ndarray]) -> None:
        import torch

        def place(t: Any) -> Any:
            t = t.to(self.device, self.dtype)
            if self.options.channels_last and t.dim() == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            return t

        self.inputs = tuple(place(t) for t in inputs)

    def run(self) -> None:
        import torch

        with torch.inference_mode():
            self.last = self.fn(*self.inputs)

    def sync(self) -> None:
        if self.on_cuda:
            import torch

            torch.cuda.synchronize(self.device)

    def timed_runs(self, n: int) -> list[float]:
        if not self.on_cuda:
            return super().timed_runs(n)
        import torch

        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        with torch.cuda.device(self.device):  # events record on the current device's stream: the module's card
            for start, end in events:
                start.record()
                self.run()
                end.record()
        torch.cuda.synchronize(self.device)
        return [start.elapsed_time(end) for start, end in events]

    def output(self) -> np.ndarray:
        return first_output(self.last)

    def close(self) -> None:
        self.module = self.fn = self.last = None
        self.inputs = ()
        if self.on_cuda:
            import torch

            torch.cuda.empty_cache()


__all__ = ["EagerRuntime"]
